package retention

import (
	"github.com/vmvault/vmvault/engine/internal/weekday"

	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sync frequency bounds of a protection group, as in the reference product.
const (
	MinSyncFrequency = 15 * time.Minute
	MaxSyncFrequency = 24 * time.Hour
)

// Schedule is a protection group's job schedule as it is configured.
// Compile it with Plan to get the triggers.
//
// All wall-clock times are in Location (nil = time.Local).
type Schedule struct {
	// SyncFrequency is how often changes are synchronised: 15m to 24h in
	// whole minutes, or 0 for no periodic synchronisation (then recovery
	// points are made only at RPTimes and by express full backups).
	// Syncs run at local midnight plus whole multiples of the frequency,
	// restarting every midnight, so 7h gives 00:00, 07:00, 14:00, 21:00
	// every day: predictable slots an administrator can plan around.
	SyncFrequency time.Duration `json:"sync_frequency,omitempty"`
	// RPTimes are the daily recovery point times, "HH:MM" (24-hour clock).
	RPTimes []string `json:"rp_times,omitempty"`
	// ExpressFull is when express full backups run, in the syntax of
	// ParseWeekly: "Sun 02:00", "daily 23:00", "Mon-Fri 22:30",
	// "Sat,Sun 01:00,13:00". Empty = never.
	ExpressFull string `json:"express_full,omitempty"`
	// Location is the time zone of the wall-clock times.
	Location *time.Location `json:"-"`
}

// Kind names the job kinds a Plan schedules.
type Kind int

// Job kinds.
const (
	KindSync Kind = iota
	KindRecoveryPoint
	KindExpressFull
)

func (k Kind) String() string {
	switch k {
	case KindSync:
		return "sync"
	case KindRecoveryPoint:
		return "recovery point"
	case KindExpressFull:
		return "express full"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Trigger says when a job is next due.
type Trigger interface {
	// Next returns the first due time strictly after after, or the zero
	// time if the job is never due.
	Next(after time.Time) time.Time
}

// Never is the Trigger of an unscheduled job.
type Never struct{}

// Next always returns the zero time.
func (Never) Next(time.Time) time.Time { return time.Time{} }

// Plan is a compiled Schedule. Every field is non-nil (Never when unset).
type Plan struct {
	Sync           Trigger
	RecoveryPoints Trigger
	ExpressFull    Trigger
}

// Next returns the earliest due time of any job after after and the kinds
// due then (several kinds can share a slot, e.g. a 02:00 recovery point and
// a Sunday 02:00 express full). Zero time and nil when nothing is scheduled.
func (p Plan) Next(after time.Time) (time.Time, []Kind) {
	var best time.Time
	var kinds []Kind
	for _, c := range []struct {
		k Kind
		t Trigger
	}{{KindSync, p.Sync}, {KindRecoveryPoint, p.RecoveryPoints}, {KindExpressFull, p.ExpressFull}} {
		if c.t == nil {
			continue
		}
		n := c.t.Next(after)
		switch {
		case n.IsZero():
		case best.IsZero() || n.Before(best):
			best, kinds = n, []Kind{c.k}
		case n.Equal(best):
			kinds = append(kinds, c.k)
		}
	}
	return best, kinds
}

// Validate checks the schedule without building the plan.
func (s Schedule) Validate() error {
	_, err := s.Plan()
	return err
}

// Plan validates the schedule and compiles its triggers. An all-empty
// schedule is valid: a group protected by hand only.
func (s Schedule) Plan() (Plan, error) {
	loc := s.Location
	if loc == nil {
		loc = time.Local
	}
	p := Plan{Sync: Never{}, RecoveryPoints: Never{}, ExpressFull: Never{}}
	if f := s.SyncFrequency; f != 0 {
		if f < MinSyncFrequency || f > MaxSyncFrequency || f%time.Minute != 0 {
			return Plan{}, fmt.Errorf("retention: sync frequency %v: want 15m to 24h in whole minutes: %w", f, ErrInvalid)
		}
		p.Sync = Interval{Every: f, Location: loc}
	}
	if len(s.RPTimes) > 0 {
		w := Weekly{Location: loc}
		for d := range w.Days {
			w.Days[d] = true
		}
		for _, str := range s.RPTimes {
			c, err := ParseClock(str)
			if err != nil {
				return Plan{}, fmt.Errorf("retention: recovery point time: %w", err)
			}
			w.Times = append(w.Times, c)
		}
		w.Times = normClocks(w.Times)
		p.RecoveryPoints = w
	}
	if strings.TrimSpace(s.ExpressFull) != "" {
		w, err := ParseWeekly(s.ExpressFull, loc)
		if err != nil {
			return Plan{}, fmt.Errorf("retention: express full: %w", err)
		}
		p.ExpressFull = w
	}
	return p, nil
}

// Clock is a wall-clock time of day.
type Clock struct{ Hour, Minute int }

func (c Clock) String() string { return fmt.Sprintf("%02d:%02d", c.Hour, c.Minute) }
func (c Clock) minutes() int   { return c.Hour*60 + c.Minute }
func (c Clock) on(day time.Time) time.Time {
	return time.Date(day.Year(), day.Month(), day.Day(), c.Hour, c.Minute, 0, 0, day.Location())
}

// ParseClock parses "HH:MM" (24-hour clock, 00:00 to 23:59; "9:05" is
// accepted too).
func ParseClock(s string) (Clock, error) {
	in := s
	s = strings.TrimSpace(s)
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 {
		return Clock{}, fmt.Errorf("time %q: want HH:MM: %w", in, ErrInvalid)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || h[0] == '+' || m[0] == '+' {
		return Clock{}, fmt.Errorf("time %q: want HH:MM: %w", in, ErrInvalid)
	}
	if hh > 23 || mm > 59 {
		return Clock{}, fmt.Errorf("time %q: out of range 00:00-23:59: %w", in, ErrInvalid)
	}
	return Clock{hh, mm}, nil
}

// normClocks sorts and de-duplicates, so Next can stop at the first hit.
func normClocks(cs []Clock) []Clock {
	sort.Slice(cs, func(i, j int) bool { return cs[i].minutes() < cs[j].minutes() })
	out := cs[:0]
	for i, c := range cs {
		if i == 0 || c != cs[i-1] {
			out = append(out, c)
		}
	}
	return out
}

// Interval is due at local midnight plus every whole multiple of Every
// that falls before the next midnight. Slots are computed in elapsed time
// from midnight, so on DST change days they stay Every apart.
type Interval struct {
	Every    time.Duration
	Location *time.Location
}

// Next implements Trigger.
func (iv Interval) Next(after time.Time) time.Time {
	if iv.Every <= 0 {
		return time.Time{}
	}
	loc := iv.Location
	if loc == nil {
		loc = time.Local
	}
	t := after.In(loc)
	midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc)
	next := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
	k := t.Sub(midnight)/iv.Every + 1
	if c := midnight.Add(k * iv.Every); c.Before(next) {
		return c
	}
	return next
}

// Weekly is due at each of Times on each day in Days (indexed by
// time.Weekday), wall-clock in Location. A time that does not exist on a
// DST change day is normalised by time.Date (02:30 becomes 03:30).
type Weekly struct {
	Days     [7]bool
	Times    []Clock
	Location *time.Location
}

// Next implements Trigger.
func (w Weekly) Next(after time.Time) time.Time {
	loc := w.Location
	if loc == nil {
		loc = time.Local
	}
	t := after.In(loc)
	// Eight days cover "same weekday next week, earlier time than now".
	for i := 0; i <= 7; i++ {
		day := time.Date(t.Year(), t.Month(), t.Day()+i, 12, 0, 0, 0, loc)
		if !w.Days[day.Weekday()] {
			continue
		}
		for _, c := range w.Times {
			if at := c.on(day); at.After(after) {
				return at
			}
		}
	}
	return time.Time{}
}

// String renders w in ParseWeekly syntax.
func (w Weekly) String() string {
	var days []string
	all := true
	for d := time.Monday; ; d = (d + 1) % 7 {
		if w.Days[d] {
			days = append(days, d.String()[:3])
		} else {
			all = false
		}
		if d == time.Sunday {
			break
		}
	}
	ds := strings.Join(days, ",")
	if all {
		ds = "daily"
	}
	ts := make([]string, len(w.Times))
	for i, c := range w.Times {
		ts[i] = c.String()
	}
	return ds + " " + strings.Join(ts, ",")
}

// ParseWeekly parses the tiny calendar syntax of express full backups:
//
//	DAYS HH:MM[,HH:MM...]
//
// DAYS is "daily" (or "*") or a comma-separated list of days and day
// ranges: "Sun", "Mon-Fri", "Sat,Sun", "Fri-Mon" (ranges may wrap past
// Sunday). Day names are three-letter or full English names in any case.
// Examples: "Sun 02:00", "daily 23:00", "Mon,Wed,Fri 22:30".
func ParseWeekly(spec string, loc *time.Location) (Weekly, error) {
	fields := strings.Fields(spec)
	if len(fields) != 2 {
		return Weekly{}, fmt.Errorf("schedule %q: want DAYS HH:MM, e.g. \"Sun 02:00\" or \"daily 23:00\": %w", spec, ErrInvalid)
	}
	w := Weekly{Location: loc}
	days, err := ParseDays(fields[0])
	if err != nil {
		return Weekly{}, fmt.Errorf("schedule %q: %w", spec, err)
	}
	w.Days = days
	for _, ts := range strings.Split(fields[1], ",") {
		c, err := ParseClock(ts)
		if err != nil {
			return Weekly{}, fmt.Errorf("schedule %q: %w", spec, err)
		}
		w.Times = append(w.Times, c)
	}
	w.Times = normClocks(w.Times)
	return w, nil
}

// ParseDays parses "daily", "*", or a comma list of days and ranges
// ("Mon-Fri,Sun") into a set indexed by time.Weekday.
func ParseDays(s string) ([7]bool, error) {
	var set [7]bool
	if ls := strings.ToLower(s); ls == "daily" || ls == "*" {
		for i := range set {
			set[i] = true
		}
		return set, nil
	}
	return weekday.Parse(s, "Mon..Sun, a range like Mon-Fri, or daily", ErrInvalid)
}
