// Package weekday parses the day lists that schedules share: retention's
// express-full days and throttle's rate windows ("Mon-Fri", "Sat,Sun",
// "Fri-Mon" wrapping the week).
package weekday

import (
	"fmt"
	"strings"
	"time"
)

var names = map[string]time.Weekday{
	"mon": time.Monday, "monday": time.Monday,
	"tue": time.Tuesday, "tuesday": time.Tuesday,
	"wed": time.Wednesday, "wednesday": time.Wednesday,
	"thu": time.Thursday, "thursday": time.Thursday,
	"fri": time.Friday, "friday": time.Friday,
	"sat": time.Saturday, "saturday": time.Saturday,
	"sun": time.Sunday, "sunday": time.Sunday,
}

// Parse reads a comma list of day names and ranges into a set indexed by
// time.Weekday. An unknown day gives `unknown day "x" (want <want>)`
// wrapping sentinel, so each caller keeps its own hint and error class.
func Parse(s, want string, sentinel error) ([7]bool, error) {
	var set [7]bool
	day := func(n string) (time.Weekday, error) {
		d, ok := names[strings.ToLower(strings.TrimSpace(n))]
		if !ok {
			return 0, fmt.Errorf("unknown day %q (want %s): %w", n, want, sentinel)
		}
		return d, nil
	}
	for _, part := range strings.Split(s, ",") {
		from, to, isRange := strings.Cut(part, "-")
		a, err := day(from)
		if err != nil {
			return set, err
		}
		b := a
		if isRange {
			if b, err = day(to); err != nil {
				return set, err
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			set[d] = true
			if d == b {
				break
			}
		}
	}
	return set, nil
}
