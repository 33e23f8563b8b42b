package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/vmvault/vmvault/engine/retention"
)

// Protection groups.
//
// A group is a policy shared by a set of VMs: the retention range (how
// many days of recovery points are kept) and the job schedule (sync
// frequency, daily recovery point times, express full backups). It is one
// small file, catalog/groups/<name>.json, written like every catalog file
// (temp+fsync+rename, 0600).
//
// Membership is not in the group file but in each VM record (VM.Group), as
// it was before groups had files: one source of truth, and a VM is in at
// most one group. A VM enters the catalog with its first backup, so a new
// VM joins a group with `backup --group G`; known VMs join with AddToGroup.
// Recovery points record the group their VM was in when they were made.

// ErrUnknownGroup is returned for a protection group that does not exist.
var ErrUnknownGroup = errors.New("unknown protection group")

// MaxRetentionDays bounds a group's retention range (100 years: anything
// larger is a typo, not a policy).
const MaxRetentionDays = 36500

// Group is a protection group as stored.
type Group struct {
	Name string `json:"name"`
	// RetentionDays is the retention range: recovery points younger than
	// this many calendar days (counted back from the VM's newest point)
	// are kept by a forget that uses the group's policy.
	RetentionDays int `json:"retention_days"`
	// SyncFrequency is a retention.ParseDuration string ("15m", "1h"), ""
	// for none.
	SyncFrequency string `json:"sync_frequency,omitempty"`
	// RPTimes are the daily recovery point times ("HH:MM").
	RPTimes []string `json:"rp_times,omitempty"`
	// ExpressFull is the express full schedule (retention.ParseWeekly
	// syntax, e.g. "Sun 02:00").
	ExpressFull string    `json:"express_full,omitempty"`
	Created     time.Time `json:"created"`
}

// groupNameRE keeps group names usable as file names on every OS.
var groupNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Schedule returns the group's job schedule (wall-clock times in the
// server's local time zone).
func (g Group) Schedule() (retention.Schedule, error) {
	s := retention.Schedule{RPTimes: g.RPTimes, ExpressFull: g.ExpressFull, Location: time.Local}
	if g.SyncFrequency != "" {
		d, err := retention.ParseDuration(g.SyncFrequency)
		if err != nil {
			return s, fmt.Errorf("sync frequency: %w", err)
		}
		s.SyncFrequency = d
	}
	return s, nil
}

// Policy is the forget policy the group's retention range gives.
func (g Group) Policy() retention.Policy {
	return retention.Policy{RetentionDays: g.RetentionDays, Location: time.Local}
}

// Validate checks the name, the retention range and the schedule (which
// must compile with retention.Schedule.Plan).
func (g Group) Validate() error {
	if !groupNameRE.MatchString(g.Name) {
		return fmt.Errorf("group name %q: want 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", g.Name)
	}
	if g.RetentionDays < 1 || g.RetentionDays > MaxRetentionDays {
		return fmt.Errorf("group %s: retention range %d days: want 1 to %d", g.Name, g.RetentionDays, MaxRetentionDays)
	}
	s, err := g.Schedule()
	if err != nil {
		return fmt.Errorf("group %s: %w", g.Name, err)
	}
	if _, err := s.Plan(); err != nil {
		return fmt.Errorf("group %s: %w", g.Name, err)
	}
	return nil
}

func (c *catalog) groupPath(name string) string { return c.path(groupsDir, name+".json") }

// CreateGroup validates g and stores it; an existing group is never
// replaced. Created is set to now when zero.
func (r *Catalog) CreateGroup(g Group) (Group, error) {
	if err := g.Validate(); err != nil {
		return Group{}, fmt.Errorf("engine: create group: %w", err)
	}
	if g.SyncFrequency != "" {
		d, _ := retention.ParseDuration(g.SyncFrequency) // checked by Validate
		g.SyncFrequency = retention.FormatDuration(d)
	}
	if len(g.RPTimes) > 0 {
		// Stored as the schedule runs them: sorted, "HH:MM", no repeats.
		seen := map[string]bool{}
		var ts []string
		for _, s := range g.RPTimes {
			c, _ := retention.ParseClock(s) // checked by Validate
			if !seen[c.String()] {
				seen[c.String()] = true
				ts = append(ts, c.String())
			}
		}
		sort.Strings(ts)
		g.RPTimes = ts
	}
	if g.Created.IsZero() {
		g.Created = time.Now().UTC().Truncate(time.Second)
	}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return Group{}, fmt.Errorf("engine: create group: %w", err)
	}
	if err := os.MkdirAll(r.cat.path(groupsDir), 0o700); err != nil {
		return Group{}, fmt.Errorf("engine: create group: %w", err)
	}
	unlock, err := r.cat.lock()
	if err != nil {
		return Group{}, fmt.Errorf("engine: create group: %w", err)
	}
	defer unlock()
	if err := writeFileAtomic(r.cat.groupPath(g.Name), b, true); err != nil {
		if errors.Is(err, os.ErrExist) {
			return Group{}, fmt.Errorf("engine: create group: group %q already exists", g.Name)
		}
		return Group{}, fmt.Errorf("engine: create group: %w", err)
	}
	return g, nil
}

// Group returns the stored group name.
func (r *Catalog) Group(name string) (Group, error) {
	if !groupNameRE.MatchString(name) {
		return Group{}, fmt.Errorf("engine: group %q: %w", name, ErrUnknownGroup)
	}
	var g Group
	if err := readJSON(r.cat.groupPath(name), &g); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Group{}, fmt.Errorf("engine: group %q: %w (create it with: vmvault group create %s --retention-days N)", name, ErrUnknownGroup, name)
		}
		return Group{}, fmt.Errorf("engine: group %s: %w", name, err)
	}
	return g, nil
}

// ListGroups returns every group, sorted by name. A damaged group file is
// an error: a policy must never silently disappear.
func (r *Catalog) ListGroups() ([]Group, error) {
	ents, err := os.ReadDir(r.cat.path(groupsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("engine: list groups: %w", err)
	}
	var out []Group
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".json") {
			continue
		}
		g, err := r.Group(strings.TrimSuffix(n, ".json"))
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// GroupMembers returns the VMs of group name, sorted by name.
func (r *Catalog) GroupMembers(name string) ([]VM, error) {
	vms, err := r.ListVMs()
	if err != nil {
		return nil, err
	}
	var out []VM
	for _, vm := range vms {
		if vm.Group == name {
			out = append(out, vm)
		}
	}
	return out, nil
}

// AddToGroup puts VMs (names or GUIDs, known to the catalog) into group
// name. A VM already in another group is refused (remove it there first),
// and nothing changes unless every VM can be added. It returns the VMs
// whose record changed (a VM already in the group is no change).
//
// The whole decision holds the catalog write lock: two concurrent adds of
// one VM to two groups cannot both succeed, and a concurrent backup that
// renames the VM cannot drop the membership.
func (r *Catalog) AddToGroup(name string, vms ...string) ([]VM, error) {
	unlock, err := r.cat.lock()
	if err != nil {
		return nil, fmt.Errorf("engine: group %s: %w", name, err)
	}
	defer unlock()
	if _, err := r.Group(name); err != nil {
		return nil, err
	}
	var todo []VM
	for _, v := range vms {
		vm, err := r.FindVM(v)
		if err != nil {
			if errors.Is(err, ErrUnknownVM) {
				return nil, fmt.Errorf("%w (a VM enters the catalog with its first backup: vmvault backup --group %s --vm %s ...)", err, name, v)
			}
			return nil, err
		}
		switch {
		case vm.Group == name:
		case vm.Group != "" && r.groupExists(vm.Group):
			return nil, fmt.Errorf("engine: VM %s is in group %s; remove it there first (vmvault group remove %s %s)", vm.Name, vm.Group, vm.Group, vm.Name)
		default:
			todo = append(todo, vm)
		}
	}
	if n, err := r.cat.setGroup(todo, name); err != nil {
		return todo[:n], fmt.Errorf("engine: group %s: add %s: %w", name, todo[n].Name, err)
	}
	return todo, nil
}

// RemoveFromGroup takes VMs out of group name; a VM not in it is an
// error, and nothing changes unless every VM can be removed. Their
// recovery points keep the group they were made in.
func (r *Catalog) RemoveFromGroup(name string, vms ...string) ([]VM, error) {
	unlock, err := r.cat.lock()
	if err != nil {
		return nil, fmt.Errorf("engine: group %s: %w", name, err)
	}
	defer unlock()
	if _, err := r.Group(name); err != nil {
		return nil, err
	}
	var todo []VM
	for _, v := range vms {
		vm, err := r.FindVM(v)
		if err != nil {
			return nil, err
		}
		if vm.Group != name {
			return nil, fmt.Errorf("engine: VM %s is not in group %s", vm.Name, name)
		}
		todo = append(todo, vm)
	}
	if n, err := r.cat.setGroup(todo, ""); err != nil {
		return todo[:n], fmt.Errorf("engine: group %s: remove %s: %w", name, todo[n].Name, err)
	}
	return todo, nil
}

// DeleteGroup deletes group name. A group with members is refused unless
// force, which first takes every member out (their recovery points stay,
// and keep their recorded group). It returns the members taken out.
func (r *Catalog) DeleteGroup(name string, force bool) ([]VM, error) {
	unlock, err := r.cat.lock()
	if err != nil {
		return nil, fmt.Errorf("engine: delete group %s: %w", name, err)
	}
	defer unlock()
	if _, err := r.Group(name); err != nil {
		return nil, err
	}
	members, err := r.GroupMembers(name)
	if err != nil {
		return nil, err
	}
	if len(members) > 0 && !force {
		names := make([]string, len(members))
		for i, m := range members {
			names[i] = m.Name
		}
		return nil, fmt.Errorf("engine: group %s has %d member(s) (%s): remove them first or use --force", name, len(members), strings.Join(names, ", "))
	}
	if n, err := r.cat.setGroup(members, ""); err != nil {
		return members[:n], fmt.Errorf("engine: delete group %s: %w", name, err)
	}
	if err := os.Remove(r.cat.groupPath(name)); err != nil {
		return members, fmt.Errorf("engine: delete group %s: %w", name, err)
	}
	return members, syncDirErr(r.cat.path(groupsDir))
}

// setGroup records group in each VM's record, in order, and returns how
// many records were written before an error. The caller holds the catalog
// write lock.
func (c *catalog) setGroup(vms []VM, group string) (int, error) {
	for i := range vms {
		vms[i].Group = group
		if err := c.putVM(vms[i]); err != nil {
			return i, err
		}
	}
	return len(vms), nil
}

// SetVMSources sets the sources the scheduler backs VM vm (name or GUID)
// up from, replacing those of its latest recovery point (VM.Sources).
// Each must be an absolute path: the scheduler runs as a service whose
// working directory has nothing to do with the shell that set them, so
// callers make what the user typed absolute (the CLI uses filepath.Abs).
// Paths are cleaned and repeats dropped; they need not exist now (a VM's
// storage may be offline; `schedule run --dry-run` shows missing ones).
//
// Like group membership it is a VM record edit: only a VM the catalog
// knows (its first backup makes the record; one that failed or was
// interrupted leaves it without a recovery point, which the override then
// lets the scheduler back up), under the catalog write lock so a
// concurrent `group add` or backup is not lost.
func (r *Catalog) SetVMSources(vm string, sources []string) (VM, error) {
	clean, err := cleanSources(sources)
	if err != nil {
		return VM{}, fmt.Errorf("engine: VM %s: sources: %w", vm, err)
	}
	return r.updateVM(vm, "set sources", func(v *VM) { v.Sources = clean })
}

// ClearVMSources removes VM vm's source override: the scheduler goes back
// to the sources of its latest recovery point. Clearing a VM without an
// override is no error.
func (r *Catalog) ClearVMSources(vm string) (VM, error) {
	return r.updateVM(vm, "clear sources", func(v *VM) { v.Sources = nil })
}

// cleanSources checks and normalises a source override.
func cleanSources(sources []string) ([]string, error) {
	if len(sources) == 0 {
		return nil, errors.New("no path given (to go back to the latest recovery point's sources, clear them)")
	}
	var out []string
	seen := map[string]bool{}
	for _, s := range sources {
		if s == "" || !filepath.IsAbs(s) {
			return nil, fmt.Errorf("%q is not an absolute path", s)
		}
		c := filepath.Clean(s)
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// updateVM applies edit to the record of VM vm (name or GUID) under the
// catalog write lock and writes it back (temp+fsync+rename, like
// setGroup). An unknown VM is ErrUnknownVM with the way in, as for
// AddToGroup.
func (r *Catalog) updateVM(vm, what string, edit func(*VM)) (VM, error) {
	unlock, err := r.cat.lock()
	if err != nil {
		return VM{}, fmt.Errorf("engine: VM %s: %s: %w", vm, what, err)
	}
	defer unlock()
	v, err := r.FindVM(vm)
	if err != nil {
		if errors.Is(err, ErrUnknownVM) {
			return VM{}, fmt.Errorf("%w (a VM enters the catalog with its first backup: vmvault backup --vm %s SOURCE...)", err, vm)
		}
		return VM{}, err
	}
	edit(&v)
	if err := r.cat.putVM(v); err != nil {
		return VM{}, fmt.Errorf("engine: VM %s: %s: %w", v.Name, what, err)
	}
	return v, nil
}

func (r *Catalog) groupExists(name string) bool {
	_, err := r.Group(name)
	return err == nil
}

// GroupView is what `group show` prints: the group, its members, when its
// jobs run next, and its disk space.
type GroupView struct {
	Group
	// Policy is the forget policy of the retention range, in words.
	Policy  string        `json:"policy"`
	Members []GroupMember `json:"members"`
	// Next is the next due time of each scheduled job kind (none when the
	// group has no schedule), earliest first.
	Next []PlannedJob `json:"next"`
	// NextRun is the earliest of Next with every kind due then
	// (retention.Plan.Next); nil when nothing is scheduled.
	NextRun *PlannedRun `json:"next_run,omitempty"`
	Space   GroupSpace  `json:"space"`
}

// PlannedRun is the next time any job of the group is due.
type PlannedRun struct {
	Time  time.Time `json:"time"`
	Kinds []string  `json:"kinds"`
}

// GroupMember is one VM of a group with its recovery points.
type GroupMember struct {
	Name           string    `json:"name"`
	GUID           string    `json:"guid"`
	RecoveryPoints int       `json:"recovery_points"`
	Oldest         time.Time `json:"oldest,omitzero"`
	Newest         time.Time `json:"newest,omitzero"`
	BytesStored    int64     `json:"bytes_stored"`
}

// PlannedJob is the next run of one job kind.
type PlannedJob struct {
	Kind string    `json:"kind"` // sync, recovery point, express full
	Time time.Time `json:"time"`
}

// GroupSpace is the disk space of a group's recovery points.
type GroupSpace struct {
	// Used = DataStored + Manifests.
	Used int64 `json:"used"`
	// DataStored is the sum of bytes_stored of the current members'
	// recovery points: what each backup added to the repository (new
	// chunks after dedup and compression, before erasure-coding parity).
	DataStored int64 `json:"data_stored"`
	// Manifests is the sum of the manifests' sizes (uncompressed, so an
	// upper bound of what they take).
	Manifests      int64 `json:"manifests"`
	RecoveryPoints int   `json:"recovery_points"`
	// Counted says the above in words (it is what `group show` prints).
	Counted string `json:"counted"`
	// Estimate for the retention range, or EstimateError ("not enough
	// history: ...") when the history cannot give one.
	Estimate      *SpaceEstimate `json:"estimate,omitempty"`
	EstimateError string         `json:"estimate_error,omitempty"`
	// EstimateNote qualifies an estimate from less than a day of history.
	EstimateNote string `json:"estimate_note,omitempty"`
}

// SpaceEstimate is retention.Estimate in JSON form.
type SpaceEstimate struct {
	Base          int64 `json:"base"`
	DailyChange   int64 `json:"daily_change"`
	RetentionDays int   `json:"retention_days"`
	Total         int64 `json:"total"`
}

// spaceCounted is GroupSpace.Counted.
const spaceCounted = "bytes stored by each current member's remaining recovery points when they were made " +
	"(new chunks after dedup and compression, without parity) plus their manifest sizes; " +
	"data a point shares with another VM or group counts only where it was stored first, " +
	"and chunks of forgotten points still held until a prune are not counted"

// ShowGroup gathers the GroupView of group name at time now.
//
// The space estimate (retention.EstimateSpace) takes as base the
// bytes_stored of each member's oldest remaining recovery point (the
// initial full copy, as long as it has not been forgotten), and as history
// every later point's bytes_stored at its time, so the daily change rate
// is the growth observed across the members' history.
func (r *Catalog) ShowGroup(name string, now time.Time) (*GroupView, error) {
	g, err := r.Group(name)
	if err != nil {
		return nil, err
	}
	v := &GroupView{Group: g, Policy: g.Policy().String(), Members: []GroupMember{}, Next: []PlannedJob{}}
	s, err := g.Schedule()
	if err != nil {
		return nil, fmt.Errorf("engine: group %s: %w", name, err)
	}
	plan, err := s.Plan()
	if err != nil {
		return nil, fmt.Errorf("engine: group %s: %w", name, err)
	}
	for _, t := range []struct {
		kind retention.Kind
		tr   retention.Trigger
	}{{retention.KindSync, plan.Sync}, {retention.KindRecoveryPoint, plan.RecoveryPoints}, {retention.KindExpressFull, plan.ExpressFull}} {
		if n := t.tr.Next(now); !n.IsZero() {
			v.Next = append(v.Next, PlannedJob{Kind: t.kind.String(), Time: n})
		}
	}
	sort.SliceStable(v.Next, func(i, j int) bool { return v.Next[i].Time.Before(v.Next[j].Time) })
	if at, kinds := plan.Next(now); !at.IsZero() {
		v.NextRun = &PlannedRun{Time: at}
		for _, k := range kinds {
			v.NextRun.Kinds = append(v.NextRun.Kinds, k.String())
		}
	}

	members, err := r.GroupMembers(name)
	if err != nil {
		return nil, err
	}
	var base int64
	var history []retention.Usage
	for _, vm := range members {
		ps, err := listPointers(r.cat, vm.GUID)
		if err != nil {
			return nil, err
		}
		gm := GroupMember{Name: vm.Name, GUID: vm.GUID, RecoveryPoints: len(ps)}
		for i, p := range ps {
			gm.BytesStored += p.BytesStored
			v.Space.DataStored += p.BytesStored
			v.Space.Manifests += p.ManifestSize
			u := retention.Usage{Time: p.Time, NewBytes: p.BytesStored}
			if i == 0 {
				base += p.BytesStored
				u.NewBytes = 0 // counted in base; its time still starts the span
			}
			history = append(history, u)
		}
		if len(ps) > 0 {
			gm.Oldest, gm.Newest = ps[0].Time, ps[len(ps)-1].Time
		}
		v.Space.RecoveryPoints += len(ps)
		v.Members = append(v.Members, gm)
	}
	v.Space.Used = v.Space.DataStored + v.Space.Manifests
	v.Space.Counted = spaceCounted
	est, err := retention.EstimateSpace(base, history, g.RetentionDays)
	switch {
	case errors.Is(err, retention.ErrTooLittleHistory):
		v.Space.EstimateError = fmt.Sprintf("not enough history: %d recovery point(s) at %d distinct time(s), need at least 2 at different times",
			len(history), distinctTimes(history))
	case err != nil:
		v.Space.EstimateError = err.Error()
	default:
		v.Space.Estimate = &SpaceEstimate{Base: est.Base, DailyChange: est.DailyChange, RetentionDays: est.RetentionDays, Total: est.Total}
		if span := historySpan(history); span < 24*time.Hour {
			v.Space.EstimateNote = fmt.Sprintf("the history spans only %s: the daily rate is rough until it covers a day or more", retention.FormatDuration(span))
		}
	}
	return v, nil
}

func distinctTimes(h []retention.Usage) int {
	seen := map[int64]bool{}
	for _, u := range h {
		seen[u.Time.UnixNano()] = true
	}
	return len(seen)
}

func historySpan(h []retention.Usage) time.Duration {
	if len(h) == 0 {
		return 0
	}
	lo, hi := h[0].Time, h[0].Time
	for _, u := range h[1:] {
		if u.Time.Before(lo) {
			lo = u.Time
		}
		if u.Time.After(hi) {
			hi = u.Time
		}
	}
	return hi.Sub(lo)
}
