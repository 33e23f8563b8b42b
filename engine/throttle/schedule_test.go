package throttle

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const (
	KiB = 1 << 10
	MiB = 1 << 20
)

// when parses "Mon 15:04" into a time in the week of Monday 23 Nov 2026.
func when(t *testing.T, s string) time.Time {
	t.Helper()
	day, hm, _ := strings.Cut(s, " ")
	off := map[string]int{"Mon": 0, "Tue": 1, "Wed": 2, "Thu": 3, "Fri": 4, "Sat": 5, "Sun": 6}[day]
	c, err := time.Parse("15:04", hm)
	if err != nil {
		t.Fatal(err)
	}
	return time.Date(2026, 11, 23+off, c.Hour(), c.Minute(), 30, 0, time.UTC)
}

func TestScheduleRateAt(t *testing.T) {
	type probe struct {
		at   string
		rate int64
	}
	for _, tc := range []struct {
		spec   string
		probes []probe
	}{
		{"Mon-Fri 08:00-18:00=20MiB/s,*=0", []probe{
			{"Mon 07:59", 0}, {"Mon 08:00", 20 * MiB}, {"Wed 12:00", 20 * MiB}, {"Fri 17:59", 20 * MiB},
			{"Fri 18:00", 0}, {"Sat 12:00", 0}, {"Sun 09:00", 0},
		}},
		// Wrap past midnight belongs to the start day: Fri night into Sat.
		{"Fri 22:00-06:00=1MiB/s", []probe{
			{"Fri 21:59", 0}, {"Fri 22:00", MiB}, {"Fri 23:59", MiB}, {"Sat 00:00", MiB}, {"Sat 05:59", MiB},
			{"Sat 06:00", 0}, {"Fri 03:00", 0}, {"Thu 23:00", 0}, {"Sat 22:30", 0},
		}},
		{"Mon-Sun 23:00-01:00=5MiB/s,*=1MiB/s", []probe{
			{"Mon 00:30", 5 * MiB}, {"Sun 23:30", 5 * MiB}, {"Mon 01:00", MiB}, {"Wed 22:59", MiB},
		}},
		// Day lists and window lists share the comma with rule separation.
		{"Sat,Sun 10:00-16:00=50MB/s,Mon-Fri 08:00-12:00,13:00-18:00=10MiB/s,*=100Mbit/s", []probe{
			{"Sun 11:00", 50e6}, {"Sat 16:00", 12.5e6}, {"Mon 09:00", 10 * MiB}, {"Mon 12:30", 12.5e6},
			{"Tue 13:00", 10 * MiB}, {"Fri 18:00", 12.5e6},
		}},
		// First match wins; no match is unlimited.
		{"Mon 09:00-10:00=1MiB/s;Mon=2MiB/s", []probe{
			{"Mon 09:30", MiB}, {"Mon 11:00", 2 * MiB}, {"Mon 00:00", 2 * MiB}, {"Tue 09:30", 0},
		}},
		{"22:00-24:00=1KiB/s", []probe{{"Wed 21:59", 0}, {"Wed 22:00", KiB}, {"Wed 23:59", KiB}, {"Thu 00:00", 0}}},
		{"fri-MON=1.5KiB/s", []probe{{"Fri 00:00", 1536}, {"Sun 12:00", 1536}, {"Mon 23:59", 1536}, {"Tue 00:00", 0}}},
		{" Sat, Sun 10:00-16:00 = 5MiB/s ; * = 1MiB/s ", []probe{{"Sun 10:00", 5 * MiB}, {"Sun 09:00", MiB}}},
		{"20MiB/s", []probe{{"Mon 00:00", 20 * MiB}, {"Sun 23:59", 20 * MiB}}},
		{"", []probe{{"Mon 00:00", 0}}},
		{"*=0", []probe{{"Tue 10:00", 0}}},
	} {
		s, err := ParseSchedule(tc.spec)
		if err != nil {
			t.Errorf("ParseSchedule(%q): %v", tc.spec, err)
			continue
		}
		for _, p := range tc.probes {
			if got := s.RateAt(when(t, p.at)); got != p.rate {
				t.Errorf("%q at %s: rate %d, want %d", tc.spec, p.at, got, p.rate)
			}
		}
	}
	var nilSched *Schedule
	if nilSched.RateAt(time.Now()) != 0 || nilSched.String() != "unlimited" {
		t.Error("nil schedule is not unlimited")
	}
	if got := Fixed(3 * MiB).RateAt(time.Now()); got != 3*MiB {
		t.Errorf("Fixed: %d", got)
	}
	if s, err := ParseSchedule(Fixed(3 * MiB).String()); err != nil || s.RateAt(time.Now()) != 3*MiB {
		t.Errorf("Fixed(3MiB).String() %q does not parse back: %v", Fixed(3*MiB).String(), err)
	}
}

func TestParseScheduleErrors(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"Mon-Fri 08:00-18:00", `rule "Mon-Fri 08:00-18:00" has no =RATE`},
		{"Mon-Fri 08:00-18:00=20MiB/s,Sat", `rule "Sat" has no =RATE`},
		{"Mon-Fri 08:00-18:00=20Mib/s", `unknown unit "Mib"; did you mean MiB/s?`},
		{"Mon-Fri 08:00-18:00=20mb/s", `did you mean MB/s?`},
		{"Mon-Fri 08:00-18:00=20", "missing unit"},
		{"Mon=20 furlongs/s", `unknown unit "furlongs"`},
		{"Funday=1MiB/s", `unknown day "Funday"`},
		{"Mon-Xyz 08:00-09:00=1MiB/s", `unknown day "Xyz"`},
		{"Mon 08:00=1MiB/s", `time window "08:00": want HH:MM-HH:MM`},
		{"Mon 25:00-26:00=1MiB/s", `time "25:00": out of range`},
		{"Mon 08:00-24:30=1MiB/s", `time "24:30": out of range`},
		{"Mon 24:00-08:00=1MiB/s", `time "24:00": out of range`},
		{"Mon 8-9=1MiB/s", `time "8": want HH:MM`},
		{"Mon 08:00-08:00=1MiB/s", "empty (start equals end"},
		{"*=0,Mon=1MiB/s", `rule "Mon=1MiB/s" comes after "*" and can never match`},
		{"=1MiB/s", `nothing before "="`},
		{"Mon 08:00-18:00 extra=1MiB/s", "want [DAYS] [HH:MM-HH:MM]=RATE"},
		{"Mon foo=1MiB/s", `"foo": want a time window`},
		{"Mon=fast", "want a number and a unit"},
		{"Mon=1.5.5MiB/s", "want a number and a unit"},
		{"Mon=0.1B/s", "below 1 B/s"},
		{"Mon=-1MiB/s", "want a number and a unit"},
		{"Mon=", `rate "": empty`},
		{"fast", `rule "fast" has no =RATE`},
		{"5 MiB/s extra", `rate "5 MiB/s extra": unknown unit`},
	} {
		s, err := ParseSchedule(tc.spec)
		if err == nil {
			t.Errorf("ParseSchedule(%q) = %v, want error containing %q", tc.spec, s, tc.want)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.want) || !errors.Is(err, ErrSyntax) || !strings.HasPrefix(msg, "throttle: schedule ") {
			t.Errorf("ParseSchedule(%q): %q, want it to contain %q", tc.spec, msg, tc.want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"0B/s", 0}, {"512B/s", 512}, {"512B", 512}, {"1KiB/s", 1024}, {"1KB/s", 1000}, {"1kB/s", 1000},
		{"20MiB/s", 20 * MiB}, {"20 MB/s", 20e6}, {"1.5GiB/s", 3 << 29}, {"2GB/s", 2e9}, {"1TiB/s", 1 << 40},
		{"100Mbit/s", 12.5e6}, {"1Gbit/s", 125e6}, {"8kbit/s", 1000},
	} {
		got, err := ParseRate(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for r, want := range map[int64]string{0: "unlimited", 512: "512B/s", 20 * MiB: "20MiB/s", 3 << 29: "1.5GiB/s"} {
		if got := FormatRate(r); got != want {
			t.Errorf("FormatRate(%d) = %q, want %q", r, got, want)
		}
	}
}
