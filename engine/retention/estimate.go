package retention

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
)

// ErrTooLittleHistory is returned by EstimateSpace when the history cannot
// give a rate of change (fewer than two points, or all at the same time).
var ErrTooLittleHistory = errors.New("too little history")

// Usage is what one recovery point added to the repository: the bytes it
// stored that no earlier point had (after dedup and compression).
type Usage struct {
	Time     time.Time
	NewBytes int64
}

// Estimate is a steady-state disk space estimate for one protection group.
type Estimate struct {
	Base          int64 // the full copy (initial replica / express full)
	DailyChange   int64 // average new bytes per day
	RetentionDays int
	Total         int64 // Base + RetentionDays*DailyChange
}

// EstimateSpace estimates the space a group uses once its retention range
// is full (steady state: each day adds one day of changes and expires one):
//
//	Total = Base + RetentionDays * DailyChange
//	DailyChange = sum(NewBytes of every point but the oldest) / (newest.Time - oldest.Time in days)
//
// The oldest point's bytes are left out of the sum because the interval
// they cover started before the history does; counting them would
// overstate the rate. base is the size of one full copy as stored. The
// estimate is only as good as the history: give it at least a day, better
// a week, so daily and weekly patterns average out. It ignores dedup
// between groups and the slow replacement of the base by changed blocks,
// which both make the real figure smaller; it is meant for sizing, where
// erring high is the safe side.
func EstimateSpace(base int64, history []Usage, retentionDays int) (Estimate, error) {
	if base < 0 {
		return Estimate{}, fmt.Errorf("retention: estimate: negative base size %d: %w", base, ErrInvalid)
	}
	if retentionDays < 0 {
		return Estimate{}, fmt.Errorf("retention: estimate: negative retention range %d days: %w", retentionDays, ErrInvalid)
	}
	if len(history) < 2 {
		return Estimate{}, fmt.Errorf("retention: estimate: %d recovery point(s), need at least 2: %w", len(history), ErrTooLittleHistory)
	}
	h := make([]Usage, len(history))
	copy(h, history)
	sort.Slice(h, func(i, j int) bool { return h[i].Time.Before(h[j].Time) })
	span := h[len(h)-1].Time.Sub(h[0].Time)
	if span <= 0 {
		return Estimate{}, fmt.Errorf("retention: estimate: all recovery points have the same time: %w", ErrTooLittleHistory)
	}
	var sum float64
	for _, u := range h[1:] {
		if u.NewBytes < 0 {
			return Estimate{}, fmt.Errorf("retention: estimate: recovery point at %s: negative size %d: %w",
				u.Time.Format(time.RFC3339), u.NewBytes, ErrInvalid)
		}
		sum += float64(u.NewBytes)
	}
	daily := sum / (span.Hours() / 24)
	total := float64(base) + float64(retentionDays)*daily
	if daily > math.MaxInt64/2 || total > math.MaxInt64/2 {
		return Estimate{}, fmt.Errorf("retention: estimate: result overflows: %w", ErrInvalid)
	}
	e := Estimate{Base: base, DailyChange: int64(math.Round(daily)), RetentionDays: retentionDays}
	e.Total = e.Base + int64(retentionDays)*e.DailyChange
	return e, nil
}
