package retention

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// at parses a local time in utc2; 2026-11-20 is a Friday.
func at(s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", s, utc2)
	if err != nil {
		panic(err)
	}
	return t
}

func TestScheduleValidate(t *testing.T) {
	for _, tc := range []struct {
		s    Schedule
		want string // "" = valid
	}{
		{Schedule{}, ""},
		{Schedule{SyncFrequency: 15 * time.Minute, RPTimes: []string{"08:00", "20:00"}, ExpressFull: "Sun 02:00"}, ""},
		{Schedule{SyncFrequency: 24 * time.Hour}, ""},
		{Schedule{SyncFrequency: 10 * time.Minute}, "sync frequency 10m0s: want 15m to 24h"},
		{Schedule{SyncFrequency: 25 * time.Hour}, "sync frequency 25h0m0s"},
		{Schedule{SyncFrequency: 15*time.Minute + 30*time.Second}, "whole minutes"},
		{Schedule{RPTimes: []string{"08:00", "25:00"}}, `recovery point time: time "25:00": out of range`},
		{Schedule{RPTimes: []string{"8"}}, `time "8": want HH:MM`},
		{Schedule{RPTimes: []string{"08:5"}}, `want HH:MM`},
		{Schedule{RPTimes: []string{"-1:30"}}, `want HH:MM`},
		{Schedule{ExpressFull: "Sunday"}, `express full: schedule "Sunday": want DAYS HH:MM`},
		{Schedule{ExpressFull: "Funday 02:00"}, `unknown day "Funday"`},
		{Schedule{ExpressFull: "Mon-Xyz 02:00"}, `unknown day "Xyz"`},
		{Schedule{ExpressFull: "Sun 2400"}, `time "2400": want HH:MM`},
	} {
		err := tc.s.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.s, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "retention: ") {
			t.Errorf("%+v: err %v, want one containing %q", tc.s, err, tc.want)
		}
	}
}

func TestIntervalNext(t *testing.T) {
	for _, tc := range []struct {
		every       time.Duration
		after, want string
	}{
		{15 * time.Minute, "2026-11-20 10:07", "2026-11-20 10:15"},
		{15 * time.Minute, "2026-11-20 10:15", "2026-11-20 10:30"}, // strictly after
		{15 * time.Minute, "2026-11-20 23:50", "2026-11-21 00:00"},
		{7 * time.Hour, "2026-11-20 00:00", "2026-11-20 07:00"},
		{7 * time.Hour, "2026-11-20 21:00", "2026-11-21 00:00"}, // restarts at midnight, not 04:00
		{7 * time.Hour, "2026-11-20 20:59", "2026-11-20 21:00"},
		{24 * time.Hour, "2026-11-20 00:00", "2026-11-21 00:00"},
	} {
		got := Interval{Every: tc.every, Location: utc2}.Next(at(tc.after))
		if want := at(tc.want); !got.Equal(want) {
			t.Errorf("every %v after %s: got %v, want %v", tc.every, tc.after, got, want)
		}
	}
}

func TestIntervalNextDST(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// 29 Mar 2026: 02:00 CET jumps to 03:00 CEST. Hourly slots are elapsed
	// hours from midnight, so after 01:30 the next one is one hour after
	// 01:00, shown as 03:00 CEST.
	iv := Interval{Every: time.Hour, Location: berlin}
	got := iv.Next(time.Date(2026, 3, 29, 1, 30, 0, 0, berlin))
	if want := time.Date(2026, 3, 29, 1, 0, 0, 0, berlin).Add(time.Hour); !got.Equal(want) || got.Hour() != 3 {
		t.Errorf("got %v, want %v", got, want)
	}
	// Walking a whole DST day never goes backwards and never stalls.
	prev := time.Date(2026, 10, 24, 23, 0, 0, 0, berlin)
	for i := 0; i < 30; i++ {
		next := iv.Next(prev)
		if !next.After(prev) || next.Sub(prev) > time.Hour {
			t.Fatalf("step %d: %v -> %v", i, prev, next)
		}
		prev = next
	}
}

func TestWeeklyNext(t *testing.T) {
	for _, tc := range []struct {
		spec, after, want string
	}{
		{"Sun 02:00", "2026-11-20 10:00", "2026-11-22 02:00"},
		{"Sun 02:00", "2026-11-22 02:00", "2026-11-29 02:00"}, // strictly after: next week
		{"Sun 02:00", "2026-11-22 01:59", "2026-11-22 02:00"},
		{"daily 23:00", "2026-11-20 23:00", "2026-11-21 23:00"},
		{"* 23:00", "2026-11-20 22:00", "2026-11-20 23:00"},
		{"Mon-Fri 22:30", "2026-11-20 23:00", "2026-11-23 22:30"},
		{"fri-MON 01:00", "2026-11-23 02:00", "2026-11-27 01:00"}, // wrapping range, any case
		{"Sat,Sun 13:00,01:00", "2026-11-21 02:00", "2026-11-21 13:00"},
		{"Sat,Sun 13:00,01:00", "2026-11-21 13:00", "2026-11-22 01:00"},
		{"Wednesday 9:05", "2026-11-20 10:00", "2026-11-25 09:05"},
	} {
		w, err := ParseWeekly(tc.spec, utc2)
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if got, want := w.Next(at(tc.after)), at(tc.want); !got.Equal(want) {
			t.Errorf("%q after %s: got %v, want %v", tc.spec, tc.after, got, want)
		}
	}
	if got := (Weekly{Times: []Clock{{2, 0}}}).Next(at("2026-11-20 10:00")); !got.IsZero() {
		t.Errorf("no days: got %v, want zero", got)
	}
}

func TestWeeklyString(t *testing.T) {
	for spec, want := range map[string]string{
		"sun 2:00":            "Sun 02:00",
		"*  23:00":            "daily 23:00",
		"Fri-Mon 01:00,00:30": "Mon,Fri,Sat,Sun 00:30,01:00",
	} {
		w, err := ParseWeekly(spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := w.String(); got != want {
			t.Errorf("%q: String %q, want %q", spec, got, want)
		}
	}
}

func TestPlanNext(t *testing.T) {
	s := Schedule{
		SyncFrequency: 6 * time.Hour,
		RPTimes:       []string{"18:00", "06:00", "06:00"},
		ExpressFull:   "Sun 06:00",
		Location:      utc2,
	}
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after, want string
		kinds       []Kind
	}{
		{"2026-11-20 01:00", "2026-11-20 06:00", []Kind{KindSync, KindRecoveryPoint}},
		{"2026-11-20 06:00", "2026-11-20 12:00", []Kind{KindSync}},
		{"2026-11-20 12:00", "2026-11-20 18:00", []Kind{KindSync, KindRecoveryPoint}},
		{"2026-11-22 05:00", "2026-11-22 06:00", []Kind{KindSync, KindRecoveryPoint, KindExpressFull}},
	} {
		got, kinds := p.Next(at(tc.after))
		if !got.Equal(at(tc.want)) || !reflect.DeepEqual(kinds, tc.kinds) {
			t.Errorf("after %s: got %v %v, want %s %v", tc.after, got, kinds, tc.want, tc.kinds)
		}
	}
	if got := p.RecoveryPoints.(Weekly).Times; len(got) != 2 {
		t.Errorf("duplicate RP time not removed: %v", got)
	}
	empty, err := Schedule{}.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got, kinds := empty.Next(at("2026-11-20 01:00")); !got.IsZero() || kinds != nil {
		t.Errorf("empty schedule: got %v %v, want nothing", got, kinds)
	}
}

func TestEstimateSpace(t *testing.T) {
	const GiB, MiB = 1 << 30, 1 << 20
	day0 := at("2026-11-01 02:00")
	daily := func(n int, each int64) []Usage {
		var h []Usage
		for i := 0; i < n; i++ {
			h = append(h, Usage{Time: day0.AddDate(0, 0, i), NewBytes: each})
		}
		return h
	}
	hourly := func(n int, each int64) []Usage {
		var h []Usage
		for i := 0; i < n; i++ {
			h = append(h, Usage{Time: day0.Add(time.Duration(i) * time.Hour), NewBytes: each})
		}
		return h
	}
	// The oldest point's bytes do not count: 8 daily points are 7 days of change.
	withBigOldest := daily(8, 2*GiB)
	withBigOldest[0].NewBytes = 100 * GiB
	for _, tc := range []struct {
		name    string
		base    int64
		h       []Usage
		days    int
		daily   int64
		total   int64
		wantErr error
	}{
		{"a week of daily points", 100 * GiB, daily(8, 2*GiB), 30, 2 * GiB, 160 * GiB, nil},
		{"oldest point excluded", 100 * GiB, withBigOldest, 30, 2 * GiB, 160 * GiB, nil},
		{"hourly points scale to a day", 50 * GiB, hourly(25, 100*MiB), 5, 2400 * MiB, 50*GiB + 5*2400*MiB, nil},
		{"unsorted input", 10 * GiB, []Usage{daily(3, GiB)[2], daily(3, GiB)[0], daily(3, GiB)[1]}, 10, GiB, 20 * GiB, nil},
		{"zero retention is the base", 10 * GiB, daily(3, GiB), 0, GiB, 10 * GiB, nil},
		{"one point", 10, daily(1, 5), 5, 0, 0, ErrTooLittleHistory},
		{"same times", 10, []Usage{{day0, 1}, {day0, 2}}, 5, 0, 0, ErrTooLittleHistory},
		{"negative size", 10, []Usage{{day0, 1}, {day0.Add(time.Hour), -2}}, 5, 0, 0, ErrInvalid},
		{"negative days", 10, daily(3, 1), -1, 0, 0, ErrInvalid},
	} {
		e, err := EstimateSpace(tc.base, tc.h, tc.days)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) || !strings.HasPrefix(err.Error(), "retention: estimate: ") {
				t.Errorf("%s: err %v, want %v", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || e.DailyChange != tc.daily || e.Total != tc.total || e.Base != tc.base || e.RetentionDays != tc.days {
			t.Errorf("%s: got %+v, %v; want daily %d total %d", tc.name, e, err, tc.daily, tc.total)
		}
	}
}
