package retention

import (
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin for the DST cases, whatever the host has
)

// utc2 is a fixed non-UTC zone so that tests catch bucketing in UTC
// instead of the policy's Location.
var utc2 = time.FixedZone("UTC+2", 2*3600)

// pt makes a point whose ID is its local time, so expectations read well.
func pt(s string) Point {
	t, err := time.ParseInLocation("2006-01-02 15:04", s, utc2)
	if err != nil {
		panic(err)
	}
	return Point{ID: s, Time: t, Key: "key " + s}
}

func pts(ss ...string) []Point {
	out := make([]Point, len(ss))
	for i, s := range ss {
		out[i] = pt(s)
	}
	return out
}

// keepMap renders a result as ID -> reasons, plus the forgotten IDs.
func keepMap(r Result) (map[string]string, []string) {
	keep := map[string]string{}
	for _, k := range r.Keep {
		keep[k.ID] = strings.Join(k.Reasons, "; ")
	}
	var forget []string
	for _, f := range r.Forget {
		forget = append(forget, f.ID)
	}
	return keep, forget
}

func TestApply(t *testing.T) {
	// A typical group history, newest first: two on the 20th, a late one
	// on the 19th, a gap on the 18th, then older ones down to last year.
	hist := pts(
		"2026-11-20 10:00", "2026-11-20 08:00", "2026-11-19 23:00", "2026-11-17 12:00",
		"2026-11-16 09:00", "2026-11-02 09:00", "2026-10-31 09:00", "2025-12-31 09:00",
	)
	tests := []struct {
		name   string
		points []Point
		p      Policy
		keep   map[string]string
		forget []string
	}{
		{
			name: "empty policy keeps all", points: hist[:3], p: Policy{},
			keep: map[string]string{"2026-11-20 10:00": "no policy", "2026-11-20 08:00": "no policy", "2026-11-19 23:00": "no policy"},
		},
		{
			name: "last", points: hist[:4], p: Policy{KeepLast: 2},
			keep:   map[string]string{"2026-11-20 10:00": "last", "2026-11-20 08:00": "last"},
			forget: []string{"2026-11-19 23:00", "2026-11-17 12:00"},
		},
		{
			// The 18th has no point and does not use up one of the 3 days;
			// 08:00 on the 20th is not the newest of its day.
			name: "daily skips empty days and older points of a day", points: hist[:5], p: Policy{KeepDaily: 3},
			keep:   map[string]string{"2026-11-20 10:00": "daily 2026-11-20", "2026-11-19 23:00": "daily 2026-11-19", "2026-11-17 12:00": "daily 2026-11-17"},
			forget: []string{"2026-11-20 08:00", "2026-11-16 09:00"},
		},
		{
			name: "daily unlimited", points: hist[:5], p: Policy{KeepDaily: -1},
			keep: map[string]string{"2026-11-20 10:00": "daily 2026-11-20", "2026-11-19 23:00": "daily 2026-11-19",
				"2026-11-17 12:00": "daily 2026-11-17", "2026-11-16 09:00": "daily 2026-11-16"},
			forget: []string{"2026-11-20 08:00"},
		},
		{
			name: "hourly", points: pts("2026-11-20 10:59", "2026-11-20 10:00", "2026-11-20 09:30", "2026-11-20 07:00"), p: Policy{KeepHourly: 2},
			keep:   map[string]string{"2026-11-20 10:59": "hourly 2026-11-20T10", "2026-11-20 09:30": "hourly 2026-11-20T09"},
			forget: []string{"2026-11-20 10:00", "2026-11-20 07:00"},
		},
		{
			// ISO weeks: Mon 16th..Sun 22nd is W47; Mon 2nd is W45; Sat 31 Oct W44.
			name: "weekly", points: hist, p: Policy{KeepWeekly: 3},
			keep:   map[string]string{"2026-11-20 10:00": "weekly 2026-W47", "2026-11-02 09:00": "weekly 2026-W45", "2026-10-31 09:00": "weekly 2026-W44"},
			forget: []string{"2026-11-20 08:00", "2026-11-19 23:00", "2026-11-17 12:00", "2026-11-16 09:00", "2025-12-31 09:00"},
		},
		{
			name: "monthly and yearly", points: hist, p: Policy{KeepMonthly: 2, KeepYearly: 5},
			keep: map[string]string{"2026-11-20 10:00": "monthly 2026-11; yearly 2026", "2026-10-31 09:00": "monthly 2026-10",
				"2025-12-31 09:00": "yearly 2025"},
			forget: []string{"2026-11-20 08:00", "2026-11-19 23:00", "2026-11-17 12:00", "2026-11-16 09:00", "2026-11-02 09:00"},
		},
		{
			// ISO week 1 of 2026 starts on Mon 29 Dec 2025: the week key must
			// use the ISO year, the yearly key the calendar year.
			name: "ISO week year differs from calendar year", points: pts("2026-01-02 09:00", "2025-12-29 09:00", "2025-12-28 09:00"),
			p:      Policy{KeepWeekly: 2, KeepYearly: 2},
			keep:   map[string]string{"2026-01-02 09:00": "weekly 2026-W01; yearly 2026", "2025-12-29 09:00": "yearly 2025", "2025-12-28 09:00": "weekly 2025-W52"},
			forget: nil,
		},
		{
			// Measured from the newest point, not from now: these points are
			// years in the past and still kept.
			name: "within counts back from the newest point", points: hist[:5], p: Policy{KeepWithin: 72 * time.Hour},
			keep: map[string]string{"2026-11-20 10:00": "within 3d", "2026-11-20 08:00": "within 3d", "2026-11-19 23:00": "within 3d",
				"2026-11-17 12:00": "within 3d"},
			forget: []string{"2026-11-16 09:00"},
		},
		{
			// Exactly 3 days old is not younger than 3 days.
			name: "retention range is strict", points: pts("2026-11-20 10:00", "2026-11-17 10:01", "2026-11-17 10:00"), p: Policy{RetentionDays: 3},
			keep:   map[string]string{"2026-11-20 10:00": "retention 3d", "2026-11-17 10:01": "retention 3d"},
			forget: []string{"2026-11-17 10:00"},
		},
		{
			name: "reasons accumulate in rule order", points: hist[:4], p: Policy{KeepLast: 1, KeepDaily: 2, KeepWithin: 30 * 24 * time.Hour},
			keep: map[string]string{"2026-11-20 10:00": "last; daily 2026-11-20; within 30d", "2026-11-20 08:00": "within 30d",
				"2026-11-19 23:00": "daily 2026-11-19; within 30d", "2026-11-17 12:00": "within 30d"},
		},
		{
			name: "no points", points: nil, p: Policy{KeepLast: 3},
			keep: map[string]string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Location = utc2
			res, err := Apply(tc.points, tc.p)
			if err != nil {
				t.Fatal(err)
			}
			keep, forget := keepMap(res)
			if !reflect.DeepEqual(keep, tc.keep) {
				t.Errorf("keep:\n got %v\nwant %v", keep, tc.keep)
			}
			if !reflect.DeepEqual(forget, tc.forget) {
				t.Errorf("forget:\n got %v\nwant %v", forget, tc.forget)
			}
		})
	}
}

func TestApplyBucketsInPolicyLocation(t *testing.T) {
	// 22:30 UTC on the 19th is 00:30 on the 20th in UTC+2: one day there,
	// two days in UTC.
	a := Point{ID: "a", Time: time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)}
	b := Point{ID: "b", Time: time.Date(2026, 11, 19, 22, 30, 0, 0, time.UTC)}
	for _, tc := range []struct {
		loc  *time.Location
		keep int
	}{{utc2, 1}, {time.UTC, 2}} {
		res, err := Apply([]Point{a, b}, Policy{KeepDaily: 5, Location: tc.loc})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Keep) != tc.keep {
			t.Errorf("%v: kept %d, want %d (%+v)", tc.loc, len(res.Keep), tc.keep, res.Keep)
		}
	}
}

func TestApplyRetentionDaysAreCalendarDays(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// 25 Oct 2026 has 25 hours in Berlin (03:00 CEST -> 02:00 CET). One
	// calendar day before 25 Oct 20:00 CET is 24 Oct 20:00 CEST; 20:30 CEST
	// is 24.5 hours of elapsed time earlier, yet inside the 1-day range.
	newest := Point{ID: "new", Time: time.Date(2026, 10, 25, 20, 0, 0, 0, berlin)}
	inside := Point{ID: "inside", Time: time.Date(2026, 10, 24, 20, 30, 0, 0, berlin)}
	outside := Point{ID: "outside", Time: time.Date(2026, 10, 24, 19, 59, 0, 0, berlin)}
	if d := newest.Time.Sub(inside.Time); d <= 24*time.Hour {
		t.Fatalf("test premise: elapsed %v, want > 24h", d)
	}
	res, err := Apply([]Point{outside, newest, inside}, Policy{RetentionDays: 1, Location: berlin})
	if err != nil {
		t.Fatal(err)
	}
	keep, forget := keepMap(res)
	if len(keep) != 2 || keep["inside"] == "" || !reflect.DeepEqual(forget, []string{"outside"}) {
		t.Errorf("keep %v forget %v", keep, forget)
	}
}

func TestApplyDeterministicAndPartitions(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	base := time.Date(2026, 11, 26, 10, 0, 0, 0, utc2)
	for iter := 0; iter < 300; iter++ {
		n := 1 + rng.Intn(40)
		points := make([]Point, n)
		for i := range points {
			// Coarse times so that duplicates happen.
			at := base.Add(-time.Duration(rng.Intn(2000)) * 3 * time.Hour)
			points[i] = Point{ID: fmt.Sprintf("p%02d", i), Time: at, Key: i}
		}
		p := Policy{
			KeepLast: rng.Intn(3), KeepHourly: rng.Intn(3), KeepDaily: rng.Intn(4) - 1,
			KeepWeekly: rng.Intn(3), KeepMonthly: rng.Intn(3), KeepYearly: rng.Intn(2),
			KeepWithin: time.Duration(rng.Intn(3)) * 24 * time.Hour, RetentionDays: rng.Intn(3), Location: utc2,
		}
		res, err := Apply(points, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Keep)+len(res.Forget) != n {
			t.Fatalf("%v: %d kept + %d forgotten != %d points", p, len(res.Keep), len(res.Forget), n)
		}
		newest := points[0]
		for _, q := range points {
			if q.Time.After(newest.Time) || (q.Time.Equal(newest.Time) && q.ID > newest.ID) {
				newest = q
			}
		}
		if len(res.Keep) == 0 || res.Keep[0].ID != newest.ID {
			t.Fatalf("%v: newest point %s not kept first: %+v", p, newest.ID, res.Keep)
		}
		for _, k := range res.Keep {
			if k.Key != points[mustAtoi(t, k.ID[1:])].Key {
				t.Fatalf("key of %s not carried through", k.ID)
			}
		}
		// Same answer whatever the input order.
		shuffled := append([]Point(nil), points...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		res2, _ := Apply(shuffled, p)
		if !reflect.DeepEqual(res, res2) {
			t.Fatalf("%v: result depends on input order", p)
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{KeepDaily: -2}, "keep-daily -2"},
		{Policy{KeepLast: -5}, "keep-last -5"},
		{Policy{KeepWithin: -time.Hour}, "keep-within -1h0m0s: negative"},
		{Policy{RetentionDays: -1}, "retention range -1 days"},
	} {
		_, err := Apply(pts("2026-11-20 10:00"), tc.p)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "retention: ") {
			t.Errorf("%+v: err %v, want one containing %q", tc.p, err, tc.want)
		}
	}
	if err := (Policy{KeepDaily: -1}).Validate(); err != nil {
		t.Errorf("-1 (unlimited) rejected: %v", err)
	}
}

func TestPolicyString(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{}, "keep all (no policy)"},
		{Policy{KeepLast: 3, KeepDaily: 7, KeepMonthly: -1, KeepWithin: 30 * 24 * time.Hour, RetentionDays: 5},
			"keep 3 last, 7 daily, all monthly, within 30d, retention 5d"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "30d", want: 30 * day},
		{in: "2w", want: 14 * day},
		{in: "12h", want: 12 * time.Hour},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "90m", want: 90 * time.Minute},
		{in: " 7D ", want: 7 * day},
		{in: "1w2d3h4m5s", want: 9*day + 3*time.Hour + 4*time.Minute + 5*time.Second},
		{in: "", err: "empty"},
		{in: "d", err: "want a number"},
		{in: "-1d", err: "want a number"},
		{in: "30", err: "has no unit"},
		{in: "1.5d", err: "fractions are not supported"},
		{in: "1y", err: "no fixed length"},
		{in: "2mo", err: "no fixed length"},
		{in: "5x", err: `unknown unit "x"`},
		{in: "1d1d", err: "given twice"},
		{in: "0d", err: "must be positive"},
		{in: "99999999999w", err: "too long"},
		{in: "99999999999999999999d", err: "out of range"},
	} {
		got, err := ParseDuration(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "retention: duration ") {
				t.Errorf("ParseDuration(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{30 * day, "30d"}, {14 * day, "2w"}, {36 * time.Hour, "1d12h"}, {90 * time.Minute, "1h30m"},
		{12 * time.Hour, "12h"}, {0, "0s"}, {1500 * time.Millisecond, "1s"},
	} {
		got := FormatDuration(tc.d)
		if got != tc.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
		if tc.d >= time.Second && tc.d%time.Second == 0 {
			if back, err := ParseDuration(got); err != nil || back != tc.d {
				t.Errorf("round trip %v -> %q -> %v, %v", tc.d, got, back, err)
			}
		}
	}
}
