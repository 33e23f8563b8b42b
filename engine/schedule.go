package engine

// The scheduler: which members of the protection groups are due now, and
// running their backups.
//
// The decision (Decide) is a pure function of a group's compiled schedule
// (retention.Plan), one member's history and the time: a job kind is due
// when its trigger's first slot after the member's last backup of that
// kind has come. Sync and recovery point slots count from the newest
// recovery point; express full slots from the newest full backup (a full
// recovery point, or a successful full backup job whose point retention
// may have forgotten since). Missed slots are not made up one by one: a
// member that was not backed up for three days gets one backup. A manual
// backup counts like a scheduled one. A failed attempt delays the next
// one by the retry delay, so a broken member is retried, not hammered.
//
// Sources: a scheduled backup reads the VM record's source override when
// one is set (VM.Sources, `vmvault group sources`), else what the
// member's latest recovery point was made from (Manifest.Sources: the disk
// files and VM folders given to `vmvault backup`, as absolute paths). A
// VM folder is scanned again, so new disks and checkpoints are picked up.
// A member with neither has no sources: its first backup is made by hand,
// or its sources are set.
//
// Run takes the members one at a time (a repository has one writer), then
// applies each group's retention range to the groups that got a new
// recovery point (forget; a prune only on request). A failing member does
// not stop the others; every attempt leaves a job record. Cancelling ctx
// (SIGINT/SIGTERM) cancels the running backup, which then commits nothing
// (Backup's guarantee), and skips the rest.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/vmvault/vmvault/engine/retention"
)

// DefaultRetryDelay is how long the scheduler waits after a member's
// failed backup before it tries that member again.
const DefaultRetryDelay = 30 * time.Minute

// scheduleLookback bounds the history a decision reads. Every trigger
// fires at least once in any 8 days (syncs at most 24h apart, recovery
// point times daily, express fulls weekly), so a member whose last backup
// of a kind is older than that is due for it whatever happened before.
const scheduleLookback = 8 * 24 * time.Hour

// MemberHistory is what the scheduling decision knows about one member.
type MemberHistory struct {
	// LastRP is the time of the member's newest recovery point (zero:
	// none).
	LastRP time.Time
	// LastFull is the time of its newest full backup (zero: none known).
	LastFull time.Time
	// LastFailure is the start of its newest backup attempt when that
	// attempt failed after LastRP (zero otherwise).
	LastFailure time.Time
	// RunningSince is the start of a backup of the member running now
	// (zero: none).
	RunningSince time.Time
}

// DueDecision is whether a member is due.
type DueDecision struct {
	Due bool
	// Full: run the backup as an express full.
	Full bool
	// Kinds are the job kinds due now, or when not due, the kinds due
	// next at At.
	Kinds []retention.Kind
	// At is, when due, the time it became due; otherwise the time it is
	// due next (zero: never, the group has no schedule).
	At     time.Time
	Reason string
}

// Decide says whether a member with history h of a group with schedule
// plan is due at now. A failure delays each kind to at least
// h.LastFailure+retry. A member whose backup is running is not due; it is
// looked at again a minute later.
func Decide(plan retention.Plan, h MemberHistory, now time.Time, retry time.Duration) DueDecision {
	type cand struct {
		kind retention.Kind
		at   time.Time
	}
	var cs []cand
	retried := false
	for _, c := range []struct {
		kind   retention.Kind
		t      retention.Trigger
		anchor time.Time
	}{
		{retention.KindSync, plan.Sync, h.LastRP},
		{retention.KindRecoveryPoint, plan.RecoveryPoints, h.LastRP},
		{retention.KindExpressFull, plan.ExpressFull, h.LastFull},
	} {
		if c.t == nil {
			continue
		}
		at := c.t.Next(c.anchor)
		if at.IsZero() {
			continue // this kind is not scheduled
		}
		if c.anchor.IsZero() {
			at = now // never done: due now (not "since year 1")
		}
		if !h.LastFailure.IsZero() && retry > 0 {
			if r := h.LastFailure.Add(retry); r.After(at) {
				at, retried = r, true
			}
		}
		cs = append(cs, cand{c.kind, at})
	}
	if len(cs) == 0 {
		return DueDecision{Reason: "no schedule (the group is backed up by hand)"}
	}
	earliest := cs[0].at
	for _, c := range cs[1:] {
		if c.at.Before(earliest) {
			earliest = c.at
		}
	}
	if !h.RunningSince.IsZero() {
		return DueDecision{At: later(earliest, now.Add(time.Minute)),
			Reason: "a backup of it is running since " + fmtSchedTime(h.RunningSince, now)}
	}
	var d DueDecision
	for _, c := range cs {
		if !c.at.After(now) {
			d.Due = true
			d.Kinds = append(d.Kinds, c.kind)
			d.Full = d.Full || c.kind == retention.KindExpressFull
			if d.At.IsZero() || c.at.Before(d.At) {
				d.At = c.at
			}
		}
	}
	if !d.Due {
		d.At = earliest
		for _, c := range cs {
			if c.at.Equal(earliest) {
				d.Kinds = append(d.Kinds, c.kind)
			}
		}
	}
	kinds := kindNames(d.Kinds)
	switch {
	case d.Due && h.LastRP.IsZero():
		d.Reason = "no recovery point yet"
	case d.Due && !h.LastFailure.IsZero():
		d.Reason = fmt.Sprintf("%s due; retrying after the failed backup at %s", strings.Join(kinds, ", "), fmtSchedTime(h.LastFailure, now))
	case d.Due && d.Full && h.LastFull.IsZero():
		d.Reason = fmt.Sprintf("%s due: no full backup in the last %d days", strings.Join(kinds, ", "), int(scheduleLookback.Hours()/24))
	case d.Due:
		d.Reason = fmt.Sprintf("%s due since %s (last recovery point %s)", strings.Join(kinds, ", "), fmtSchedTime(d.At, now), fmtSchedTime(h.LastRP, now))
	case retried:
		d.Reason = fmt.Sprintf("next %s at %s (retry after the failed backup at %s)", strings.Join(kinds, ", "), fmtSchedTime(d.At, now), fmtSchedTime(h.LastFailure, now))
	default:
		d.Reason = fmt.Sprintf("next %s at %s", strings.Join(kinds, ", "), fmtSchedTime(d.At, now))
	}
	return d
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func kindNames(ks []retention.Kind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.String()
	}
	return out
}

// fmtSchedTime formats t in now's zone (the server's local time).
func fmtSchedTime(t, now time.Time) string {
	return t.In(now.Location()).Format("2006-01-02 15:04:05 MST")
}

// ScheduleOptions tune a Scheduler.
type ScheduleOptions struct {
	// Groups, when not empty, limits the scheduler to these groups (which
	// must exist).
	Groups []string
	// Retry is the delay after a failed backup before the member is tried
	// again: 0 means DefaultRetryDelay, a negative value no delay.
	Retry time.Duration
	// Prune runs a prune after retention forgot recovery points.
	Prune bool
	// PreHook and PostHook are given to every backup (BackupOptions; the
	// VM is in $VMVAULT_VM and $VMVAULT_VM_GUID).
	PreHook, PostHook string
	// Limit throttles every backup (BackupOptions.Limit).
	Limit func(ctx context.Context, n int) error
	// Logf receives one line per notable step.
	Logf func(format string, args ...any)
}

func (o *ScheduleOptions) retry() time.Duration {
	switch {
	case o.Retry == 0:
		return DefaultRetryDelay
	case o.Retry < 0:
		return 0
	}
	return o.Retry
}

func (o *ScheduleOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Scheduler plans and runs the scheduled backups of protection groups.
// Keep one across the iterations of a long-running loop: history that
// cannot change (finished job records, recovery point pointers) is read
// once.
type Scheduler struct {
	Options ScheduleOptions
	jobs    jobCache
	// fulls caches the Full flag of pointers (immutable) by "<guid>/<id>".
	fulls map[string]bool
}

// SchedulePlan is the decision for every member of the selected groups.
type SchedulePlan struct {
	Time   time.Time       `json:"time"`
	Groups []ScheduleGroup `json:"groups"`
	// Members are sorted by group, then VM name.
	Members []ScheduledMember `json:"members"`
	// Next is the earliest time a member not due now becomes due (zero:
	// none is scheduled).
	Next time.Time `json:"next,omitzero"`
}

// ScheduleGroup is one group of a plan.
type ScheduleGroup struct {
	Name string `json:"name"`
	// Schedule is the group's schedule, Retention its forget policy, in
	// words.
	Schedule  string `json:"schedule"`
	Retention string `json:"retention"`
	Members   int    `json:"members"`
	Due       int    `json:"due"`
}

// ScheduledMember is the decision for one member.
type ScheduledMember struct {
	Group  string `json:"group"`
	VM     string `json:"vm"`
	VMGUID string `json:"vm_guid"`
	Due    bool   `json:"due"`
	Full   bool   `json:"full"`
	// Kinds due now, or due next at At.
	Kinds       []string  `json:"kinds"`
	At          time.Time `json:"at,omitzero"`
	Reason      string    `json:"reason"`
	LastRP      time.Time `json:"last_rp,omitzero"`
	LastFull    time.Time `json:"last_full,omitzero"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	// Sources are what a backup of it reads (filled by Sources and Run),
	// SourcesFrom where they come from (SourcesFromVM, SourcesFromLatestRP).
	Sources      []string `json:"sources,omitempty"`
	SourcesFrom  string   `json:"sources_from,omitempty"`
	SourcesError string   `json:"sources_error,omitempty"`
	// MissingSources are the Sources that do not exist now (Sources only).
	MissingSources []string `json:"missing_sources,omitempty"`
}

// Due returns the members due now.
func (p *SchedulePlan) Due() []ScheduledMember {
	var out []ScheduledMember
	for _, m := range p.Members {
		if m.Due {
			out = append(out, m)
		}
	}
	return out
}

// Plan decides, at now, which members of the selected groups are due. It
// reads the catalog only (no password, no repository lock).
func (s *Scheduler) Plan(c *Catalog, now time.Time) (*SchedulePlan, error) {
	groups, err := s.groups(c)
	if err != nil {
		return nil, err
	}
	since := now.Add(-scheduleLookback)
	jobs, err := c.cat.recentJobs("backup", since, &s.jobs)
	if err != nil {
		return nil, fmt.Errorf("engine: schedule: %w", err)
	}
	host := hostname()
	if s.fulls == nil {
		s.fulls = map[string]bool{}
	}
	seenPtr := map[string]bool{}
	p := &SchedulePlan{Time: now, Groups: []ScheduleGroup{}, Members: []ScheduledMember{}}
	for _, g := range groups {
		sched, err := g.Schedule()
		if err != nil {
			return nil, fmt.Errorf("engine: schedule: group %s: %w", g.Name, err)
		}
		plan, err := sched.Plan()
		if err != nil {
			return nil, fmt.Errorf("engine: schedule: group %s: %w", g.Name, err)
		}
		members, err := c.GroupMembers(g.Name)
		if err != nil {
			return nil, err
		}
		sg := ScheduleGroup{Name: g.Name, Schedule: scheduleWords(g), Retention: g.Policy().String(), Members: len(members)}
		for _, vm := range members {
			h, err := s.history(c, vm, jobs, since, host, seenPtr)
			if err != nil {
				return nil, err
			}
			d := Decide(plan, h, now, s.Options.retry())
			m := ScheduledMember{Group: g.Name, VM: vm.Name, VMGUID: vm.GUID, Due: d.Due, Full: d.Full,
				Kinds: kindNames(d.Kinds), At: d.At, Reason: d.Reason,
				LastRP: h.LastRP, LastFull: h.LastFull, LastFailure: h.LastFailure}
			if d.Due {
				sg.Due++
			} else if !d.At.IsZero() && (p.Next.IsZero() || d.At.Before(p.Next)) {
				p.Next = d.At
			}
			p.Members = append(p.Members, m)
		}
		p.Groups = append(p.Groups, sg)
	}
	for k := range s.fulls {
		if !seenPtr[k] {
			delete(s.fulls, k)
		}
	}
	return p, nil
}

// groups returns the selected groups, sorted by name.
func (s *Scheduler) groups(c *Catalog) ([]Group, error) {
	if len(s.Options.Groups) == 0 {
		return c.ListGroups()
	}
	var out []Group
	seen := map[string]bool{}
	for _, name := range s.Options.Groups {
		if seen[name] {
			continue
		}
		seen[name] = true
		g, err := c.Group(name)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// history gathers a member's MemberHistory: recovery point times from the
// pointer file names, the Full flag from pointers younger than since, and
// attempts from the backup job records jobs (since `since`).
func (s *Scheduler) history(c *Catalog, vm VM, jobs []Job, since time.Time, host string, seenPtr map[string]bool) (MemberHistory, error) {
	var h MemberHistory
	ids, err := c.cat.rpIDs(vm.GUID)
	if err != nil {
		return h, fmt.Errorf("engine: schedule: VM %s: %w", vm.Name, err)
	}
	if n := len(ids); n > 0 {
		h.LastRP, _, _ = parseRPID(ids[n-1])
	}
	for i := len(ids) - 1; i >= 0; i-- {
		t, _, _ := parseRPID(ids[i])
		if t.Before(since) {
			break
		}
		key := vm.GUID + "/" + ids[i]
		seenPtr[key] = true
		full, ok := s.fulls[key]
		if !ok {
			p, err := c.cat.pointer(vm.GUID, ids[i])
			if err != nil {
				continue // forgotten meanwhile, or damaged: check reports that
			}
			full = p.Full
			s.fulls[key] = full
		}
		if full {
			h.LastFull = t
			break
		}
	}
	var newest *Job
	for i := range jobs {
		j := &jobs[i]
		if j.VMGUID != vm.GUID && (j.VMGUID != "" || j.VM != vm.Name) {
			continue
		}
		if j.Result == JobRunning {
			if jobAlive(*j, host) {
				h.RunningSince = j.Start
			}
			continue
		}
		if j.Result == JobOK && j.Full && j.Start.After(h.LastFull) {
			h.LastFull = j.Start
		}
		if newest == nil || j.Start.After(newest.Start) {
			newest = j
		}
	}
	if newest != nil && newest.Result == JobFailed && newest.Start.After(h.LastRP) {
		h.LastFailure = newest.Start
	}
	return h, nil
}

// scheduleWords renders a group's schedule in one line.
func scheduleWords(g Group) string {
	var parts []string
	if g.SyncFrequency != "" {
		parts = append(parts, "sync every "+g.SyncFrequency)
	}
	if len(g.RPTimes) > 0 {
		parts = append(parts, "recovery points at "+strings.Join(g.RPTimes, ","))
	}
	if g.ExpressFull != "" {
		parts = append(parts, "express full "+g.ExpressFull)
	}
	if len(parts) == 0 {
		return "none (backed up by hand)"
	}
	return strings.Join(parts, "; ")
}

// Sources fills in the sources of every member of p (for a dry run).
func (s *Scheduler) Sources(ctx context.Context, r *Repo, p *SchedulePlan) {
	for i := range p.Members {
		m := &p.Members[i]
		sv, err := r.memberSources(ctx, m)
		if err != nil {
			m.SourcesError = err.Error()
			continue
		}
		m.Sources, m.SourcesFrom = sv.Sources, sv.SourcesFrom
		for _, p := range sv.Sources {
			if _, err := os.Stat(p); err != nil {
				m.MissingSources = append(m.MissingSources, p)
			}
		}
	}
}

// Where a scheduled backup's sources come from (SourcesView.SourcesFrom).
const (
	// SourcesFromVM: the VM record's override (SetVMSources).
	SourcesFromVM = "vm"
	// SourcesFromLatestRP: the VM's latest recovery point.
	SourcesFromLatestRP = "latest-rp"
)

// SourcesView is what a scheduled backup of a VM reads, and from where.
type SourcesView struct {
	VM     string `json:"vm"`
	VMGUID string `json:"vm_guid"`
	Group  string `json:"group,omitempty"`
	// Sources are absolute disk file and VM folder paths.
	Sources     []string `json:"sources"`
	SourcesFrom string   `json:"sources_from"`
	// RP is the recovery point they were taken from (SourcesFromLatestRP).
	RP string `json:"rp,omitempty"`
}

// VMSources says what a scheduled backup of VM vm (name or GUID) reads
// now: its source override, else its latest recovery point's sources (the
// manifest is read, hence a Repo). A VM with neither is an error that
// says how to give it sources.
func (r *Repo) VMSources(ctx context.Context, vm string) (*SourcesView, error) {
	v, err := r.FindVM(vm)
	if err != nil {
		return nil, err
	}
	return r.sourcesOf(ctx, v)
}

// VMSourceOverride returns the SourcesView of VM vm's source override
// (SetVMSources), or nil when it has none and the scheduler takes the
// latest recovery point's (Repo.VMSources reads those). It reads the
// catalog only, so it needs no password.
func (r *Catalog) VMSourceOverride(vm string) (*SourcesView, error) {
	v, err := r.FindVM(vm)
	if err != nil {
		return nil, err
	}
	return overrideView(v), nil
}

// overrideView is the SourcesView of vm's override, nil without one.
func overrideView(vm VM) *SourcesView {
	if len(vm.Sources) == 0 {
		return nil
	}
	return &SourcesView{VM: vm.Name, VMGUID: vm.GUID, Group: vm.Group, Sources: vm.Sources, SourcesFrom: SourcesFromVM}
}

// memberSources returns a member's sources. The VM record is read again
// rather than taken from the plan: an override set since the plan was
// made is what the administrator means now.
func (r *Repo) memberSources(ctx context.Context, m *ScheduledMember) (*SourcesView, error) {
	vm, err := r.cat.vm(m.VMGUID)
	if err != nil {
		return nil, fmt.Errorf("engine: schedule: VM %s: %w", m.VM, err)
	}
	vm.Group = m.Group // the group it is scheduled by, for the hints
	return r.sourcesOf(ctx, vm)
}

// sourcesOf is the sources of vm: its override, else its latest recovery
// point's.
func (r *Repo) sourcesOf(ctx context.Context, vm VM) (*SourcesView, error) {
	if sv := overrideView(vm); sv != nil {
		return sv, nil
	}
	setHint := fmt.Sprintf("vmvault group sources --repo %s %s PATH...", r.dir, vm.Name)
	man, err := r.LoadManifest(ctx, vm.GUID, "latest")
	if errors.Is(err, ErrUnknownRP) {
		backupHint := fmt.Sprintf("vmvault backup --repo %s --vm %s SOURCE...", r.dir, vm.Name)
		if vm.Group != "" {
			backupHint = fmt.Sprintf("vmvault backup --repo %s --vm %s --group %s SOURCE...", r.dir, vm.Name, vm.Group)
		}
		return nil, fmt.Errorf("engine: schedule: VM %s has no recovery point to take its sources from; back it up once by hand (%s) or set its sources (%s)",
			vm.Name, backupHint, setHint)
	}
	if err != nil {
		return nil, fmt.Errorf("engine: schedule: VM %s: sources: %w", vm.Name, err)
	}
	if len(man.Sources) == 0 {
		return nil, fmt.Errorf("engine: schedule: VM %s: recovery point %s records no sources; back it up once by hand or set its sources (%s)", vm.Name, man.ID, setHint)
	}
	return &SourcesView{VM: vm.Name, VMGUID: vm.GUID, Group: vm.Group,
		Sources: man.Sources, SourcesFrom: SourcesFromLatestRP, RP: man.ID}, nil
}

// ScheduleReport is what Run did.
type ScheduleReport struct {
	Plan      *SchedulePlan     `json:"plan"`
	Runs      []ScheduledRun    `json:"runs"`
	Retention []ScheduledForget `json:"retention"`
	Prune     *PruneReport      `json:"prune,omitempty"`
	// PruneError is set when the prune failed.
	PruneError string `json:"prune_error,omitempty"`
	// Interrupted: ctx was cancelled; the running backup was cancelled
	// (it made no recovery point) and the rest skipped.
	Interrupted bool `json:"interrupted"`
}

// Run results of a member.
const (
	RunOK          = "ok"
	RunFailed      = "failed"
	RunInterrupted = "interrupted" // cancelled while it ran: no recovery point
	RunSkipped     = "skipped"     // not started: the run was interrupted before
)

// ScheduledRun is one member's backup.
type ScheduledRun struct {
	Group       string    `json:"group"`
	VM          string    `json:"vm"`
	VMGUID      string    `json:"vm_guid"`
	Full        bool      `json:"full"`
	Kinds       []string  `json:"kinds"`
	Sources     []string  `json:"sources"`
	SourcesFrom string    `json:"sources_from,omitempty"`
	Result      string    `json:"result"`
	Error       string    `json:"error,omitempty"`
	RP          string    `json:"rp,omitempty"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	BytesRead   int64     `json:"bytes_read"`
	BytesNew    int64     `json:"bytes_new"`
	BytesStored int64     `json:"bytes_stored"`
	Warnings    []string  `json:"warnings,omitempty"`
}

// ScheduledForget is the retention applied to one group after its backups.
type ScheduledForget struct {
	Group     string   `json:"group"`
	Policy    string   `json:"policy"`
	Forgotten []string `json:"forgotten"` // "<vm>/<rp-id>"
	Kept      int      `json:"kept"`
	Error     string   `json:"error,omitempty"`
}

// Failures lists every failure of the run, one line each ("group/vm:
// error", "group: retention: error", "prune: error"). Interrupted and
// skipped members are not failures.
func (rep *ScheduleReport) Failures() []string {
	var out []string
	for _, r := range rep.Runs {
		if r.Result == RunFailed {
			out = append(out, r.Group+"/"+r.VM+": "+r.Error)
		}
	}
	for _, f := range rep.Retention {
		if f.Error != "" {
			out = append(out, f.Group+": retention: "+f.Error)
		}
	}
	if rep.PruneError != "" {
		out = append(out, "prune: "+rep.PruneError)
	}
	return out
}

// Run backs up the due members of p, one at a time, then applies the
// retention range of every group that got a new recovery point, then
// (Options.Prune) prunes if anything was forgotten. Failures are in the
// report (Failures), not the error, which is only for a run that could
// not be attempted at all.
func (s *Scheduler) Run(ctx context.Context, r *Repo, p *SchedulePlan) (*ScheduleReport, error) {
	o := &s.Options
	rep := &ScheduleReport{Plan: p, Runs: []ScheduledRun{}, Retention: []ScheduledForget{}}
	okGroups := map[string]bool{}
	var order []string
	for i := range p.Members {
		m := &p.Members[i]
		if !m.Due {
			continue
		}
		if len(order) == 0 || order[len(order)-1] != m.Group {
			order = append(order, m.Group)
		}
		run := ScheduledRun{Group: m.Group, VM: m.VM, VMGUID: m.VMGUID, Full: m.Full, Kinds: m.Kinds, Start: time.Now().UTC()}
		if ctx.Err() != nil {
			rep.Interrupted = true
			run.Result, run.End = RunSkipped, run.Start
			rep.Runs = append(rep.Runs, run)
			continue
		}
		s.runMember(ctx, r, m, &run)
		if run.Result == RunInterrupted {
			rep.Interrupted = true
		}
		if run.Result == RunOK {
			okGroups[m.Group] = true
		}
		rep.Runs = append(rep.Runs, run)
	}
	forgotten := 0
	for _, g := range order {
		if !okGroups[g] || ctx.Err() != nil {
			continue
		}
		f := ScheduledForget{Group: g, Forgotten: []string{}}
		fr, err := r.Forget(ForgetOptions{Group: g})
		if fr != nil {
			f.Forgotten = append(f.Forgotten, fr.forgottenNames()...)
			f.Kept = fr.Kept
			if len(fr.VMs) > 0 {
				f.Policy = fr.VMs[0].Policy
			}
		}
		if err != nil {
			f.Error = err.Error()
			o.logf("%s: retention: %v", g, err)
		} else {
			o.logf("%s: retention (%s): forgot %d recovery points, kept %d", g, f.Policy, len(f.Forgotten), f.Kept)
		}
		forgotten += len(f.Forgotten)
		rep.Retention = append(rep.Retention, f)
	}
	if o.Prune && forgotten > 0 && ctx.Err() == nil {
		pr, err := r.Prune(ctx, PruneOptions{})
		if err != nil {
			rep.PruneError = err.Error()
			o.logf("prune: %v", err)
		} else {
			rep.Prune = pr
			o.logf("prune: %d packs deleted, %d repacked, %s freed", pr.GC.DeletedPacks, pr.GC.RepackedPacks, fmtBytes(pr.GC.FreedBytes))
		}
	}
	if ctx.Err() != nil {
		rep.Interrupted = true
	}
	return rep, nil
}

// runMember backs up one due member into run.
func (s *Scheduler) runMember(ctx context.Context, r *Repo, m *ScheduledMember, run *ScheduledRun) {
	o := &s.Options
	defer func() { run.End = time.Now().UTC() }()
	trigger := strings.Join(m.Kinds, ",")
	sv, err := r.memberSources(ctx, m)
	if err != nil {
		// Recorded like a failed backup, so the retry delay applies.
		r.recordFailedJob(Job{Kind: "backup", VM: m.VM, VMGUID: m.VMGUID, Group: m.Group, Trigger: trigger}, err)
		run.Result, run.Error = RunFailed, err.Error()
		if errors.Is(err, context.Canceled) {
			run.Result = RunInterrupted
		}
		o.logf("%s/%s: %v", m.Group, m.VM, err)
		return
	}
	src := sv.Sources
	m.Sources, m.SourcesFrom = src, sv.SourcesFrom
	run.Sources, run.SourcesFrom = src, sv.SourcesFrom
	what := "backup"
	if m.Full {
		what = "express full backup"
	}
	o.logf("%s/%s: %s (%s) of %s (sources from %s)", m.Group, m.VM, what, trigger, strings.Join(src, " "), sourcesFromWords(sv))
	bo := BackupOptions{VM: m.VM, Group: m.Group, Sources: src, Full: m.Full,
		PreHook: o.PreHook, PostHook: o.PostHook, Limit: o.Limit,
		trigger: trigger, vmGUID: m.VMGUID}
	if o.Logf != nil {
		prefix := m.Group + "/" + m.VM + ": "
		bo.Logf = func(format string, args ...any) { o.Logf(prefix+format, args...) }
		bo.HookOutput = logWriter{logf: bo.Logf}
	}
	res, err := r.Backup(ctx, bo)
	switch {
	case err != nil && ctx.Err() != nil:
		run.Result, run.Error = RunInterrupted, err.Error()
		o.logf("%s/%s: cancelled, no recovery point made", m.Group, m.VM)
	case err != nil:
		run.Result, run.Error = RunFailed, err.Error()
		o.logf("%s/%s: failed: %v", m.Group, m.VM, err)
	default:
		run.Result, run.RP = RunOK, res.Pointer.ID
		run.BytesRead, run.BytesNew, run.BytesStored = res.Pointer.BytesRead, res.Pointer.BytesNew, res.Pointer.BytesStored
		run.Warnings = res.Warnings
	}
}

// sourcesFromWords says where sv's sources come from, for log lines.
func sourcesFromWords(sv *SourcesView) string {
	if sv.SourcesFrom == SourcesFromVM {
		return "the VM record"
	}
	return "recovery point " + sv.RP
}

// logWriter turns hook output into log lines.
type logWriter struct{ logf func(string, ...any) }

func (w logWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.logf("hook: %s", l)
	}
	return len(p), nil
}
