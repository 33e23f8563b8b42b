// Package retention decides which recovery points a protection group keeps
// (restic-style forget policies plus the group's retention range), when the
// group's jobs run next, and how much disk space the group will need.
//
// Everything here is a pure function of its arguments: no clock, no I/O, so
// the engine can preview a forget ("vmvault forget --dry-run") with exactly
// the same code that later deletes.
//
// # Forget policy semantics
//
// Apply sorts the points newest first (ties broken by ID, descending, so the
// result never depends on input order) and walks them once. A point is kept
// if any rule keeps it, and every rule that does is listed in its reasons:
//
//   - KeepLast n: the n newest points. Reason "last".
//   - KeepHourly/Daily/Weekly/Monthly/Yearly n: points are bucketed by the
//     calendar period they fall in, in Policy.Location (nil = time.Local):
//     hour, day, ISO 8601 week (Monday first), month, year. The newest point
//     of a period is kept, for the n newest periods that contain at least
//     one point; periods without points do not use up the count, exactly as
//     restic counts them. Reasons "hourly 2026-11-20T14", "daily 2026-11-20",
//     "weekly 2026-W47", "monthly 2026-11", "yearly 2026".
//   - KeepWithin d: every point whose time is after newest-d, where newest is
//     the newest point, not the wall clock, so that a group whose backups
//     stopped does not silently expire its last good points. Reason
//     "within 30d".
//   - RetentionDays n (a protection group's retention range): every point
//     after the newest point's time minus n calendar days in Location (the
//     same wall-clock time n days earlier, so DST days count as days).
//     Reason "retention 30d".
//
// A count of -1 means unlimited (every period / every point), as in restic.
// Other negative numbers are an error.
//
// Differences from restic: there are no tag or keep-within-<period> rules,
// and the restic >= 0.17 rule that also keeps the oldest point while a period
// count is not used up is deliberately not copied: only the newest point of a
// period ever counts for it, which is what an administrator reading "daily"
// expects.
//
// An empty policy (every field zero) keeps every point, with reason
// "no policy": forgetting everything because nothing was configured is the
// one mistake a backup server must never make. Callers that want to refuse
// an empty policy (the forget command does, like restic) check Policy.Empty.
// A non-empty policy always keeps the newest point.
package retention

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid")

// Point is one recovery point as retention sees it.
type Point struct {
	ID   string
	Time time.Time
	// Key is carried through untouched (for the engine: whatever finds the
	// manifest again), so callers need no map from ID back to their object.
	Key any
}

// Kept is a kept point with every reason that keeps it, in rule order
// (last, hourly, daily, weekly, monthly, yearly, within, retention).
type Kept struct {
	Point
	Reasons []string
}

// Result of Apply. Both lists are sorted newest first.
type Result struct {
	Keep   []Kept
	Forget []Point
}

// Policy says which recovery points to keep. The zero value is the empty
// policy, which keeps everything.
type Policy struct {
	KeepLast    int `json:"keep_last,omitempty"`
	KeepHourly  int `json:"keep_hourly,omitempty"`
	KeepDaily   int `json:"keep_daily,omitempty"`
	KeepWeekly  int `json:"keep_weekly,omitempty"`
	KeepMonthly int `json:"keep_monthly,omitempty"`
	KeepYearly  int `json:"keep_yearly,omitempty"`
	// KeepWithin keeps every point younger than this, measured back from
	// the newest point.
	KeepWithin time.Duration `json:"keep_within,omitempty"`
	// RetentionDays is a protection group's retention range: keep every
	// point younger than this many days (calendar days in Location),
	// measured back from the newest point.
	RetentionDays int `json:"retention_days,omitempty"`
	// Location is the time zone whose calendar defines hours, days, weeks,
	// months and years. nil means time.Local.
	Location *time.Location `json:"-"`
}

// Empty reports whether the policy has no rule at all (and so keeps all).
func (p Policy) Empty() bool {
	return p.KeepLast == 0 && p.KeepHourly == 0 && p.KeepDaily == 0 && p.KeepWeekly == 0 &&
		p.KeepMonthly == 0 && p.KeepYearly == 0 && p.KeepWithin == 0 && p.RetentionDays == 0
}

// Validate checks the counts and durations.
func (p Policy) Validate() error {
	for _, c := range []struct {
		name string
		n    int
	}{
		{"keep-last", p.KeepLast}, {"keep-hourly", p.KeepHourly}, {"keep-daily", p.KeepDaily},
		{"keep-weekly", p.KeepWeekly}, {"keep-monthly", p.KeepMonthly}, {"keep-yearly", p.KeepYearly},
	} {
		if c.n < -1 {
			return fmt.Errorf("retention: %s %d: want a count >= 0, or -1 for unlimited: %w", c.name, c.n, ErrInvalid)
		}
	}
	if p.KeepWithin < 0 {
		return fmt.Errorf("retention: keep-within %v: negative duration: %w", p.KeepWithin, ErrInvalid)
	}
	if p.RetentionDays < 0 {
		return fmt.Errorf("retention: retention range %d days: negative: %w", p.RetentionDays, ErrInvalid)
	}
	return nil
}

// String describes the policy the way the forget command prints it,
// e.g. "keep 3 last, 7 daily, within 30d".
func (p Policy) String() string {
	if p.Empty() {
		return "keep all (no policy)"
	}
	var parts []string
	add := func(n int, what string) {
		switch {
		case n == -1:
			parts = append(parts, "all "+what)
		case n > 0:
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(p.KeepLast, "last")
	add(p.KeepHourly, "hourly")
	add(p.KeepDaily, "daily")
	add(p.KeepWeekly, "weekly")
	add(p.KeepMonthly, "monthly")
	add(p.KeepYearly, "yearly")
	if p.KeepWithin > 0 {
		parts = append(parts, "within "+FormatDuration(p.KeepWithin))
	}
	if p.RetentionDays > 0 {
		parts = append(parts, fmt.Sprintf("retention %dd", p.RetentionDays))
	}
	return "keep " + strings.Join(parts, ", ")
}

// bucket is one calendar-period rule: key maps a time to its period (equal
// keys = same period) and the key doubles as the human-readable reason.
type bucket struct {
	name  string
	count int
	key   func(t time.Time) string
	last  string
}

func periodBuckets(p Policy) []*bucket {
	return []*bucket{
		{name: "hourly", count: p.KeepHourly, key: func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{name: "daily", count: p.KeepDaily, key: func(t time.Time) string { return t.Format("2006-01-02") }},
		{name: "weekly", count: p.KeepWeekly, key: func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%04d-W%02d", y, w)
		}},
		{name: "monthly", count: p.KeepMonthly, key: func(t time.Time) string { return t.Format("2006-01") }},
		{name: "yearly", count: p.KeepYearly, key: func(t time.Time) string { return t.Format("2006") }},
	}
}

// Apply splits points into kept and forgotten ones. The input slice is not
// modified. See the package documentation for the exact rules.
func Apply(points []Point, p Policy) (Result, error) {
	if err := p.Validate(); err != nil {
		return Result{}, err
	}
	sorted := make([]Point, len(points))
	copy(sorted, points)
	sort.SliceStable(sorted, func(i, j int) bool {
		if !sorted[i].Time.Equal(sorted[j].Time) {
			return sorted[i].Time.After(sorted[j].Time)
		}
		return sorted[i].ID > sorted[j].ID
	})
	var res Result
	if len(sorted) == 0 {
		return res, nil
	}
	if p.Empty() {
		for _, pt := range sorted {
			res.Keep = append(res.Keep, Kept{Point: pt, Reasons: []string{"no policy"}})
		}
		return res, nil
	}

	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	newest := sorted[0].Time.In(loc)
	var withinCut, retentionCut time.Time
	if p.KeepWithin > 0 {
		withinCut = newest.Add(-p.KeepWithin)
	}
	if p.RetentionDays > 0 {
		retentionCut = newest.AddDate(0, 0, -p.RetentionDays)
	}
	buckets := periodBuckets(p)
	last := p.KeepLast

	for _, pt := range sorted {
		t := pt.Time.In(loc)
		var reasons []string
		if last != 0 {
			reasons = append(reasons, "last")
			if last > 0 {
				last--
			}
		}
		for _, b := range buckets {
			if b.count == 0 {
				continue
			}
			k := b.key(t)
			// Points are visited newest first, so the first point seen in a
			// period is that period's newest; later ones in it are skipped.
			if k == b.last {
				continue
			}
			b.last = k
			reasons = append(reasons, b.name+" "+k)
			if b.count > 0 {
				b.count--
			}
		}
		if p.KeepWithin > 0 && t.After(withinCut) {
			reasons = append(reasons, "within "+FormatDuration(p.KeepWithin))
		}
		if p.RetentionDays > 0 && t.After(retentionCut) {
			reasons = append(reasons, fmt.Sprintf("retention %dd", p.RetentionDays))
		}
		if len(reasons) > 0 {
			res.Keep = append(res.Keep, Kept{Point: pt, Reasons: reasons})
		} else {
			res.Forget = append(res.Forget, pt)
		}
	}
	return res, nil
}
