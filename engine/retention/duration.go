package retention

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// durationUnits are the units ParseDuration accepts, largest first (the
// order FormatDuration uses). A day is 24 hours and a week 7 days: these are
// lengths, not calendar periods; calendar periods are what the Keep* counts
// and RetentionDays are for.
var durationUnits = []struct {
	unit string
	d    time.Duration
}{
	{"w", 7 * 24 * time.Hour},
	{"d", 24 * time.Hour},
	{"h", time.Hour},
	{"m", time.Minute},
	{"s", time.Second},
}

// ParseDuration parses retention-style durations: one or more
// <integer><unit> terms with units w (7 days), d (24 hours), h, m (minutes)
// and s, e.g. "30d", "2w", "12h", "1d12h", "90m". Months and years are
// rejected because they have no fixed length. The result must be positive.
func ParseDuration(s string) (time.Duration, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("retention: duration %q: empty: %w", in, ErrInvalid)
	}
	var total time.Duration
	seen := map[string]bool{}
	for s != "" {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("retention: duration %q: want a number at %q (e.g. 30d, 2w, 12h): %w", in, s, ErrInvalid)
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("retention: duration %q: %w", in, err)
		}
		j := i
		for j < len(s) && (s[j] < '0' || s[j] > '9') {
			j++
		}
		unit := strings.ToLower(s[i:j])
		var d time.Duration
		for _, u := range durationUnits {
			if u.unit == unit {
				d = u.d
			}
		}
		switch {
		case strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ","):
			return 0, fmt.Errorf("retention: duration %q: fractions are not supported; use a smaller unit (36h, not 1.5d): %w", in, ErrInvalid)
		case unit == "":
			return 0, fmt.Errorf("retention: duration %q: number %s has no unit (w, d, h, m or s): %w", in, s[:i], ErrInvalid)
		case unit == "y" || unit == "mo" || unit == "month" || unit == "months":
			return 0, fmt.Errorf("retention: duration %q: months and years have no fixed length; use keep-monthly/keep-yearly or days: %w", in, ErrInvalid)
		case d == 0:
			return 0, fmt.Errorf("retention: duration %q: unknown unit %q (want w, d, h, m or s): %w", in, s[i:j], ErrInvalid)
		case seen[unit]:
			return 0, fmt.Errorf("retention: duration %q: unit %q given twice: %w", in, unit, ErrInvalid)
		}
		seen[unit] = true
		// Overflow check: time.Duration holds about 292 years.
		if n > int64((1<<63-1)/d) || total > time.Duration(1<<63-1)-time.Duration(n)*d {
			return 0, fmt.Errorf("retention: duration %q: too long: %w", in, ErrInvalid)
		}
		total += time.Duration(n) * d
		s = s[j:]
	}
	if total <= 0 {
		return 0, fmt.Errorf("retention: duration %q: must be positive: %w", in, ErrInvalid)
	}
	return total, nil
}

// FormatDuration is the inverse of ParseDuration: 720h -> "30d",
// 36h -> "1d12h", 14*24h -> "2w". Weeks are used only for whole weeks
// because "4w2d" reads worse than "30d". Sub-second parts are dropped.
func FormatDuration(d time.Duration) string {
	if d < time.Second {
		if d <= 0 {
			return "0s"
		}
		return d.String()
	}
	week := durationUnits[0].d
	if d%week == 0 {
		return fmt.Sprintf("%dw", d/week)
	}
	var b strings.Builder
	for _, u := range durationUnits[1:] {
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.unit)
			d -= n * u.d
		}
	}
	return b.String()
}
