package throttle

import (
	"github.com/vmvault/vmvault/engine/internal/weekday"

	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ErrSyntax is wrapped by every parse error of this package.
var ErrSyntax = errors.New("syntax error")

// Schedule maps a point in time to a rate in bytes per second (0 =
// unlimited). The zero value (and a nil *Schedule) is always unlimited.
//
// Syntax (ParseSchedule), rules separated by "," or ";", tried in order,
// first match wins:
//
//	[DAYS] [HH:MM-HH:MM[,HH:MM-HH:MM...]]=RATE
//	*=RATE
//
// DAYS is Mon..Sun (or full names, any case), ranges "Mon-Fri", lists
// "Sat,Sun", a wrapping range "Fri-Mon"; missing DAYS = every day. A time
// window missing = the whole day; "24:00" may end a window. A window whose
// end is not after its start wraps past midnight and belongs to the day it
// starts on: "Fri 22:00-06:00" covers Friday 22:00 to Saturday 06:00.
// "*" matches everything and must be the last rule. When no rule matches,
// the rate is unlimited. RATE is a number (fractions allowed) with a unit
// from B, KB, KiB, MB, MiB, GB, GiB, TB, TiB, kbit, Mbit, Gbit, optionally
// followed by "/s" ("20MiB/s", "100Mbit/s", "1.5GB"); a bare 0 means
// unlimited. Example:
//
//	Mon-Fri 08:00-18:00=20MiB/s,Sat,Sun 10:00-16:00=50MiB/s,*=0
//
// Times are wall-clock times in the location of the time passed to RateAt
// (the caller passes time.Now(), i.e. local time, or converts).
type Schedule struct {
	rules []rule
	src   string
}

type rule struct {
	days    [7]bool // by time.Weekday
	windows []window
	rate    int64
	any     bool // "*"
}

// window is [start, end) in minutes of the day; end <= start wraps.
type window struct{ start, end int }

// Fixed returns a schedule with one rate at all times.
func Fixed(bytesPerSecond int64) *Schedule {
	if bytesPerSecond < 0 {
		bytesPerSecond = 0
	}
	src := "*=0"
	if bytesPerSecond > 0 {
		src = "*=" + strconv.FormatInt(bytesPerSecond, 10) + "B/s"
	}
	return &Schedule{rules: []rule{{any: true, rate: bytesPerSecond}}, src: src}
}

// String returns the schedule as it was parsed.
func (s *Schedule) String() string {
	if s == nil || s.src == "" {
		return "unlimited"
	}
	return s.src
}

// RateAt returns the rate in force at t in bytes per second, 0 = unlimited.
func (s *Schedule) RateAt(t time.Time) int64 {
	if s == nil {
		return 0
	}
	wd := t.Weekday()
	prev := (wd + 6) % 7
	m := t.Hour()*60 + t.Minute()
	for _, r := range s.rules {
		if r.any || r.matches(wd, prev, m) {
			return r.rate
		}
	}
	return 0
}

func (r rule) matches(wd, prev time.Weekday, m int) bool {
	for _, w := range r.windows {
		if w.start < w.end {
			if r.days[wd] && m >= w.start && m < w.end {
				return true
			}
			continue
		}
		// Wrapping window: the evening part today, or the morning part of
		// a window that started yesterday.
		if (r.days[wd] && m >= w.start) || (r.days[prev] && m < w.end) {
			return true
		}
	}
	return false
}

// ParseSchedule parses a throttle schedule; see Schedule for the syntax.
// An empty string is the unlimited schedule. A plain rate ("20MiB/s") is
// accepted as shorthand for "*=20MiB/s".
func ParseSchedule(spec string) (*Schedule, error) {
	s := &Schedule{src: strings.TrimSpace(spec)}
	if s.src == "" {
		return s, nil
	}
	if c := s.src[0]; !strings.Contains(s.src, "=") && (c >= '0' && c <= '9' || c == '.') {
		r, err := ParseRate(s.src)
		if err != nil {
			return nil, fmt.Errorf("throttle: schedule %q: %w", spec, err)
		}
		s.rules = []rule{{any: true, rate: r}}
		return s, nil
	}
	// Commas separate rules but also days ("Sat,Sun") and windows; a piece
	// without "=" is therefore the start of a rule continued by the next.
	var pieces []string
	pending := ""
	for _, p := range strings.FieldsFunc(s.src, func(r rune) bool { return r == ',' || r == ';' }) {
		p = strings.TrimSpace(p)
		if pending != "" {
			p = pending + "," + p
		}
		if !strings.Contains(p, "=") {
			pending = p
			continue
		}
		pending = ""
		pieces = append(pieces, strings.TrimSpace(p))
	}
	if pending != "" {
		return nil, fmt.Errorf("throttle: schedule %q: rule %q has no =RATE: %w", spec, strings.TrimSpace(pending), ErrSyntax)
	}
	for i, p := range pieces {
		if i > 0 && s.rules[i-1].any {
			return nil, fmt.Errorf("throttle: schedule %q: rule %q comes after \"*\" and can never match: %w", spec, p, ErrSyntax)
		}
		r, err := parseRule(p)
		if err != nil {
			return nil, fmt.Errorf("throttle: schedule %q: rule %q: %w", spec, p, err)
		}
		s.rules = append(s.rules, r)
	}
	return s, nil
}

func parseRule(p string) (rule, error) {
	lhs, rhs, _ := strings.Cut(p, "=")
	var r rule
	var err error
	if r.rate, err = ParseRate(rhs); err != nil {
		return r, err
	}
	lhs = strings.TrimSpace(lhs)
	if lhs == "*" {
		r.any = true
		return r, nil
	}
	fields := strings.Fields(lhs)
	if len(fields) == 0 {
		return r, fmt.Errorf("nothing before \"=\" (use \"*\" for the default rate): %w", ErrSyntax)
	}
	if len(fields) > 2 {
		return r, fmt.Errorf("want [DAYS] [HH:MM-HH:MM]=RATE: %w", ErrSyntax)
	}
	// A field starting with a digit is the time windows; otherwise days.
	if c := fields[0][0]; c < '0' || c > '9' {
		if r.days, err = parseDays(fields[0]); err != nil {
			return r, err
		}
		fields = fields[1:]
	} else {
		for i := range r.days {
			r.days[i] = true
		}
	}
	if len(fields) == 0 {
		r.windows = []window{{0, 24 * 60}}
		return r, nil
	}
	if c := fields[0][0]; c < '0' || c > '9' {
		return r, fmt.Errorf("%q: want a time window HH:MM-HH:MM after the days: %w", fields[0], ErrSyntax)
	}
	for _, ws := range strings.Split(fields[0], ",") {
		w, err := parseWindow(ws)
		if err != nil {
			return r, err
		}
		r.windows = append(r.windows, w)
	}
	return r, nil
}

func parseWindow(s string) (window, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return window{}, fmt.Errorf("time window %q: want HH:MM-HH:MM: %w", s, ErrSyntax)
	}
	start, err := parseClock(a, false)
	if err != nil {
		return window{}, fmt.Errorf("time window %q: %w", s, err)
	}
	end, err := parseClock(b, true)
	if err != nil {
		return window{}, fmt.Errorf("time window %q: %w", s, err)
	}
	if start == end {
		return window{}, fmt.Errorf("time window %q: empty (start equals end; use no window for the whole day): %w", s, ErrSyntax)
	}
	return window{start, end}, nil
}

// parseClock parses HH:MM into minutes of the day; 24:00 only as an end.
func parseClock(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 {
		return 0, fmt.Errorf("time %q: want HH:MM: %w", s, ErrSyntax)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || h[0] == '+' || m[0] == '+' {
		return 0, fmt.Errorf("time %q: want HH:MM: %w", s, ErrSyntax)
	}
	if end && hh == 24 && mm == 0 {
		return 24 * 60, nil
	}
	if hh > 23 || mm > 59 {
		return 0, fmt.Errorf("time %q: out of range 00:00-23:59 (24:00 only as an end): %w", s, ErrSyntax)
	}
	return hh*60 + mm, nil
}

func parseDays(s string) ([7]bool, error) {
	return weekday.Parse(s, "Mon..Sun, a range like Mon-Fri or a list like Sat,Sun", ErrSyntax)
}

// rateUnits are matched case-sensitively, because "Mb" (megabit) and "MB"
// (megabyte) differ by a factor of eight; a case-insensitive near miss gets
// a "did you mean" error instead of a silent guess.
var rateUnits = []struct {
	unit string
	mult float64
}{
	{"B", 1},
	{"KB", 1e3}, {"kB", 1e3}, {"KiB", 1 << 10},
	{"MB", 1e6}, {"MiB", 1 << 20},
	{"GB", 1e9}, {"GiB", 1 << 30},
	{"TB", 1e12}, {"TiB", 1 << 40},
	{"kbit", 1e3 / 8}, {"Kbit", 1e3 / 8}, {"Mbit", 1e6 / 8}, {"Gbit", 1e9 / 8},
}

// ParseRate parses a rate like "20MiB/s", "1.5 GB/s", "100Mbit/s" or "0"
// into bytes per second (0 = unlimited).
func ParseRate(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("rate %q: empty: %w", in, ErrSyntax)
	}
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("rate %q: want a number and a unit like 20MiB/s: %w", in, ErrSyntax)
	}
	unit = strings.TrimSuffix(unit, "/s")
	if unit == "" {
		if v == 0 {
			return 0, nil
		}
		return 0, fmt.Errorf("rate %q: missing unit (B/s, KiB/s, MiB/s, GiB/s, KB/s, MB/s, GB/s, Mbit/s...): %w", in, ErrSyntax)
	}
	mult := 0.0
	for _, u := range rateUnits {
		if u.unit == unit {
			mult = u.mult
		}
	}
	if mult == 0 {
		for _, u := range rateUnits {
			if strings.EqualFold(u.unit, unit) {
				return 0, fmt.Errorf("rate %q: unknown unit %q; did you mean %s/s? (bytes are B, bits are bit): %w", in, unit, u.unit, ErrSyntax)
			}
		}
		return 0, fmt.Errorf("rate %q: unknown unit %q (want B/s, KiB/s, MiB/s, GiB/s, KB/s, MB/s, GB/s, Mbit/s...): %w", in, unit, ErrSyntax)
	}
	b := v * mult
	if b >= math.MaxInt64/2 {
		return 0, fmt.Errorf("rate %q: too large: %w", in, ErrSyntax)
	}
	if v > 0 && b < 1 {
		return 0, fmt.Errorf("rate %q: below 1 B/s (use 0 for unlimited): %w", in, ErrSyntax)
	}
	return int64(math.Round(b)), nil
}

// FormatRate renders bytes per second with a binary unit: "20MiB/s",
// "1.5GiB/s", "unlimited" for 0.
func FormatRate(r int64) string {
	if r <= 0 {
		return "unlimited"
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v := float64(r)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) + units[i] + "/s"
}
