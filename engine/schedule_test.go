package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/engine/retention"
	"github.com/vmvault/vmvault/internal/testdisks"
)

// at parses "2006-01-02 15:04:05" in UTC (the fake clock of these tests).
func at(s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04:05", s, time.UTC)
	if err != nil {
		panic(err)
	}
	return t
}

func mustPlan(t *testing.T, s retention.Schedule) retention.Plan {
	t.Helper()
	s.Location = time.UTC
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDecide is the scheduling decision as a table: schedule, history,
// now -> due or not, which kinds, since or until when. 2026-11-22 is a
// Sunday.
func TestDecide(t *testing.T) {
	hourly := mustPlan(t, retention.Schedule{SyncFrequency: time.Hour})
	twice := mustPlan(t, retention.Schedule{RPTimes: []string{"08:00", "20:00"}})
	weekly := mustPlan(t, retention.Schedule{SyncFrequency: 24 * time.Hour, ExpressFull: "Sun 02:00"})
	none := mustPlan(t, retention.Schedule{})
	const sync, rp, full = retention.KindSync, retention.KindRecoveryPoint, retention.KindExpressFull
	for _, tc := range []struct {
		name   string
		plan   retention.Plan
		h      MemberHistory
		now    string
		retry  time.Duration
		due    bool
		isFull bool
		kinds  []retention.Kind
		at     string // "" = zero
		reason string
	}{
		{name: "no schedule", plan: none, h: MemberHistory{LastRP: at("2026-11-26 10:05:00")}, now: "2026-11-26 10:30:00",
			reason: "no schedule"},
		{name: "sync: before the slot", plan: hourly, h: MemberHistory{LastRP: at("2026-11-26 10:05:00")}, now: "2026-11-26 10:59:59",
			kinds: []retention.Kind{sync}, at: "2026-11-26 11:00:00", reason: "next sync at 2026-11-26 11:00:00 UTC"},
		{name: "sync: at the slot", plan: hourly, h: MemberHistory{LastRP: at("2026-11-26 10:05:00")}, now: "2026-11-26 11:00:00",
			due: true, kinds: []retention.Kind{sync}, at: "2026-11-26 11:00:00", reason: "sync due since"},
		{name: "sync: slots missed, one backup due since the first", plan: hourly, h: MemberHistory{LastRP: at("2026-11-26 07:10:00")}, now: "2026-11-26 10:30:00",
			due: true, kinds: []retention.Kind{sync}, at: "2026-11-26 08:00:00"},
		{name: "sync: just backed up in the slot", plan: hourly, h: MemberHistory{LastRP: at("2026-11-26 11:00:00")}, now: "2026-11-26 11:00:09",
			kinds: []retention.Kind{sync}, at: "2026-11-26 12:00:00"},
		{name: "never backed up", plan: hourly, now: "2026-11-26 10:30:00",
			due: true, kinds: []retention.Kind{sync}, at: "2026-11-26 10:30:00", reason: "no recovery point yet"},
		{name: "rp times: before", plan: twice, h: MemberHistory{LastRP: at("2026-11-25 20:00:03")}, now: "2026-11-26 07:59:00",
			kinds: []retention.Kind{rp}, at: "2026-11-26 08:00:00"},
		{name: "rp times: due", plan: twice, h: MemberHistory{LastRP: at("2026-11-25 20:00:03")}, now: "2026-11-26 08:00:30",
			due: true, kinds: []retention.Kind{rp}, at: "2026-11-26 08:00:00"},
		{name: "rp times: a manual backup after the missed slot counts", plan: twice, h: MemberHistory{LastRP: at("2026-11-26 08:05:00")}, now: "2026-11-26 12:00:00",
			kinds: []retention.Kind{rp}, at: "2026-11-26 20:00:00"},
		{name: "express full and sync in one run", plan: weekly,
			h:   MemberHistory{LastRP: at("2026-11-21 00:00:05"), LastFull: at("2026-11-15 02:00:01")},
			now: "2026-11-22 02:00:00", due: true, isFull: true, kinds: []retention.Kind{sync, full}, at: "2026-11-22 00:00:00"},
		{name: "express full next", plan: weekly,
			h:   MemberHistory{LastRP: at("2026-11-22 00:00:04"), LastFull: at("2026-11-15 02:00:01")},
			now: "2026-11-22 01:59:00", kinds: []retention.Kind{full}, at: "2026-11-22 02:00:00"},
		{name: "express full failed: waits the retry delay", plan: weekly,
			h:   MemberHistory{LastRP: at("2026-11-22 00:00:04"), LastFull: at("2026-11-15 02:00:01"), LastFailure: at("2026-11-22 02:00:02")},
			now: "2026-11-22 02:10:00", retry: 30 * time.Minute, kinds: []retention.Kind{full}, at: "2026-11-22 02:30:02", reason: "retry after the failed backup"},
		{name: "express full failed: retried after the delay", plan: weekly,
			h:   MemberHistory{LastRP: at("2026-11-22 00:00:04"), LastFull: at("2026-11-15 02:00:01"), LastFailure: at("2026-11-22 02:00:02")},
			now: "2026-11-22 02:31:00", retry: 30 * time.Minute, due: true, isFull: true, kinds: []retention.Kind{full}, at: "2026-11-22 02:30:02", reason: "retrying"},
		{name: "old failure: retry delay long over", plan: hourly,
			h:   MemberHistory{LastRP: at("2026-11-26 07:10:00"), LastFailure: at("2026-11-26 08:00:01")},
			now: "2026-11-26 10:30:00", retry: 30 * time.Minute, due: true, kinds: []retention.Kind{sync}, at: "2026-11-26 08:30:01"},
		{name: "no retry delay", plan: hourly,
			h:   MemberHistory{LastRP: at("2026-11-26 07:10:00"), LastFailure: at("2026-11-26 10:29:00")},
			now: "2026-11-26 10:30:00", due: true, kinds: []retention.Kind{sync}, at: "2026-11-26 08:00:00"},
		{name: "running: looked at again in a minute", plan: hourly,
			h:   MemberHistory{LastRP: at("2026-11-26 07:10:00"), RunningSince: at("2026-11-26 10:00:00")},
			now: "2026-11-26 10:30:00", at: "2026-11-26 10:31:00", reason: "running since"},
		{name: "no full backup known: express full now", plan: weekly,
			h:   MemberHistory{LastRP: at("2026-11-26 00:00:03")},
			now: "2026-11-26 10:00:00", due: true, isFull: true, kinds: []retention.Kind{full}, at: "2026-11-26 10:00:00", reason: "no full backup in the last 8 days"},
		{name: "never backed up, express full scheduled: a full", plan: weekly,
			now: "2026-11-26 10:00:00", due: true, isFull: true, kinds: []retention.Kind{sync, full}, at: "2026-11-26 10:00:00", reason: "no recovery point yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.plan, tc.h, at(tc.now), tc.retry)
			var wantAt time.Time
			if tc.at != "" {
				wantAt = at(tc.at)
			}
			if d.Due != tc.due || d.Full != tc.isFull || !slices.Equal(d.Kinds, tc.kinds) || !d.At.Equal(wantAt) || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("got due=%v full=%v kinds=%v at=%v reason=%q\nwant due=%v full=%v kinds=%v at=%v reason~%q",
					d.Due, d.Full, d.Kinds, d.At, d.Reason, tc.due, tc.isFull, tc.kinds, wantAt, tc.reason)
			}
		})
	}
}

// fakePointer commits a pointer (no manifest) for history-only tests.
func fakePointer(t *testing.T, c *catalog, guid string, when time.Time, full bool) {
	t.Helper()
	if err := c.commitPointer(&Pointer{Version: ManifestVersion, VM: "x", VMGUID: guid, Time: when, Full: full}); err != nil {
		t.Fatal(err)
	}
}

func fakeJob(cat *Catalog, j Job) {
	j.ID = j.Start.UTC().Format(jobIDLayout) + "-" + j.Kind + "-" + randHex(3)
	cat.putJob(&j)
}

// TestSchedulePlanHistory: Plan gathers each member's history from the
// catalog: recovery point times and Full flags, failed attempts (matched
// by GUID, or by name when the attempt failed before the VM was known),
// full backups whose points were forgotten, running jobs.
func TestSchedulePlanHistory(t *testing.T) {
	cat, c := newCatalog(t)
	if _, err := cat.CreateGroup(Group{Name: "g", RetentionDays: 30, SyncFrequency: "1h", ExpressFull: "Sun 02:00"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.CreateGroup(Group{Name: "other", RetentionDays: 30}); err != nil {
		t.Fatal(err)
	}
	vms := map[string]string{}
	for _, n := range []string{"fresh", "failing", "fullgone", "running", "new", "outside"} {
		vm := VM{Name: n, GUID: newGUID(), Group: "g", Created: at("2026-01-01 00:00:00")}
		if n == "outside" {
			vm.Group = "other"
		}
		if err := c.putVM(vm); err != nil {
			t.Fatal(err)
		}
		vms[n] = vm.GUID
	}
	now := at("2026-11-26 10:30:00") // a Thursday
	// fresh: full last Sunday, incremental in this hour's slot.
	fakePointer(t, c, vms["fresh"], at("2026-11-22 02:00:01"), true)
	fakePointer(t, c, vms["fresh"], at("2026-11-26 10:00:02"), false)
	// failing: last point 08:00, then a failed attempt at 10:10 that died
	// before the VM was resolved (no GUID in its record).
	fakePointer(t, c, vms["failing"], at("2026-11-22 02:00:01"), true)
	fakePointer(t, c, vms["failing"], at("2026-11-26 08:00:01"), false)
	fakeJob(cat, Job{Kind: "backup", VM: "failing", Start: at("2026-11-26 09:00:00"), Result: JobOK, VMGUID: vms["failing"]})
	fakeJob(cat, Job{Kind: "backup", VM: "failing", Start: at("2026-11-26 10:10:00"), Result: JobFailed})
	// fullgone: its last full point was forgotten, but the job says it was
	// made on Sunday.
	fakePointer(t, c, vms["fullgone"], at("2026-11-26 10:00:05"), false)
	fakeJob(cat, Job{Kind: "backup", VM: "fullgone", VMGUID: vms["fullgone"], Start: at("2026-11-22 02:00:00"), Result: JobOK, Full: true})
	// running: a backup of this process is running.
	fakePointer(t, c, vms["running"], at("2026-11-26 08:00:05"), true)
	fakeJob(cat, Job{Kind: "backup", VM: "running", VMGUID: vms["running"], Start: at("2026-11-26 10:29:00"), Result: JobRunning, Host: hostname(), PID: os.Getpid()})

	s := &Scheduler{Options: ScheduleOptions{Groups: []string{"g"}}}
	p, err := s.Plan(cat, now)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ScheduledMember{}
	for _, m := range p.Members {
		got[m.VM] = m
	}
	if len(p.Members) != 5 || len(p.Groups) != 1 || p.Groups[0].Members != 5 || p.Groups[0].Due != 1 {
		t.Fatalf("plan: %+v", p)
	}
	check := func(vm string, due, full bool, atS, reason string) {
		t.Helper()
		m := got[vm]
		if m.Due != due || m.Full != full || !m.At.Equal(at(atS)) || !strings.Contains(m.Reason, reason) {
			t.Errorf("%s: due=%v full=%v at=%v reason=%q; want due=%v full=%v at=%s reason~%q", vm, m.Due, m.Full, m.At, m.Reason, due, full, atS, reason)
		}
	}
	check("fresh", false, false, "2026-11-26 11:00:00", "next sync")
	check("failing", false, false, "2026-11-26 10:40:00", "retry after the failed backup at 2026-11-26 10:10:00")
	check("fullgone", false, false, "2026-11-26 11:00:00", "next sync")
	check("running", false, false, "2026-11-26 10:31:00", "running since")
	check("new", true, true, "2026-11-26 10:30:00", "no recovery point yet")
	if !got["fullgone"].LastFull.Equal(at("2026-11-22 02:00:00")) {
		t.Errorf("fullgone: last full %v, want the job's time", got["fullgone"].LastFull)
	}
	if !p.Next.Equal(at("2026-11-26 10:31:00")) {
		t.Errorf("next %v", p.Next)
	}
	// Ten minutes later the failing member is retried; the cache gives
	// the same answers as a fresh read.
	p2, err := s.Plan(cat, now.Add(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	p3, _ := (&Scheduler{Options: s.Options}).Plan(cat, now.Add(10*time.Minute))
	b2, _ := json.Marshal(p2)
	b3, _ := json.Marshal(p3)
	if string(b2) != string(b3) {
		t.Errorf("cached plan differs from a fresh one:\n%s\n%s", b2, b3)
	}
	for _, m := range p2.Members {
		if m.VM == "failing" && (!m.Due || !strings.Contains(m.Reason, "retrying")) {
			t.Errorf("failing after the delay: %+v", m)
		}
	}
	if _, err := (&Scheduler{Options: ScheduleOptions{Groups: []string{"nope"}}}).Plan(cat, now); err == nil {
		t.Error("unknown group accepted")
	}
}

// movePointer renames a recovery point to an earlier time (its manifest
// stays the same): history without waiting.
func movePointer(t *testing.T, r *Repo, guid, id string, age time.Duration) {
	t.Helper()
	dir := r.cat.path(rpsDir, guid)
	var p map[string]any
	b, err := os.ReadFile(filepath.Join(dir, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &p)
	t0, _, _ := parseRPID(id)
	nt := t0.Add(-age)
	nid := rpIDFor(nt, 1)
	p["id"], p["time"], p["end_time"] = nid, nt, nt
	nb, _ := json.Marshal(p)
	if err := os.WriteFile(filepath.Join(dir, nid+".json"), nb, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, id+".json"))
}

// TestScheduleRun: a due member is backed up from its latest point's
// sources and gets a new point; a member whose sources are gone fails
// without stopping the other, leaves a failed job record and waits the
// retry delay; the group's retention then forgets the old points; a
// second plan right after finds nothing due.
func TestScheduleRun(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	if _, err := r.CreateGroup(Group{Name: "g", RetentionDays: 2, SyncFrequency: "24h"}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "gone.raw")
	copyFile(t, filepath.Join(td, testdisks.NoPartRaw), src)
	a := backup(t, r, BackupOptions{VM: "a", Group: "g", Sources: []string{filepath.Join(td, testdisks.GPTVHDX)}})
	b := backup(t, r, BackupOptions{VM: "b", Group: "g", Sources: []string{src}})
	os.Remove(src)
	// Both points three days old: due, and out of the retention range
	// once a new point exists.
	movePointer(t, r, a.Pointer.VMGUID, a.Pointer.ID, 72*time.Hour)
	movePointer(t, r, b.Pointer.VMGUID, b.Pointer.ID, 72*time.Hour)

	var logs []string
	s := &Scheduler{Options: ScheduleOptions{Logf: func(f string, args ...any) { logs = append(logs, strings.TrimSpace(fmtLine(f, args...))) }}}
	p, err := s.Plan(r.Catalog, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Due(); len(d) != 2 {
		t.Fatalf("due: %+v", p.Members)
	}
	rep, err := s.Run(context.Background(), r, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Result != RunOK || rep.Runs[0].RP == "" || rep.Runs[1].Result != RunFailed {
		t.Fatalf("runs: %+v", rep.Runs)
	}
	if f := rep.Failures(); len(f) != 1 || !strings.HasPrefix(f[0], "g/b: ") || !strings.Contains(f[0], "gone.raw") {
		t.Errorf("failures: %q", f)
	}
	if rep.Runs[0].Sources[0] != filepath.Join(td, testdisks.GPTVHDX) {
		t.Errorf("run a: %+v", rep.Runs[0])
	}
	if len(rep.Retention) != 1 || len(rep.Retention[0].Forgotten) != 1 || !strings.HasPrefix(rep.Retention[0].Forgotten[0], "a/") {
		t.Errorf("retention: %+v", rep.Retention)
	}
	ps, _ := r.ListRecoveryPoints("a")
	if len(ps) != 1 || ps[0].ID != rep.Runs[0].RP {
		t.Errorf("a's points after retention: %d", len(ps))
	}
	jobs, _ := ListJobs(r.dir)
	var trig []string
	for _, j := range jobs {
		if j.Trigger != "" {
			trig = append(trig, j.VM+":"+j.Result+":"+j.Trigger+":"+j.Group)
		}
	}
	if strings.Join(trig, " ") != "a:ok:sync:g b:failed:sync:g" {
		t.Errorf("scheduled jobs: %q", trig)
	}
	p2, err := s.Plan(r.Catalog, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if d := p2.Due(); len(d) != 0 {
		t.Errorf("due right after the run: %+v", d)
	}
	t.Logf("log:\n%s", strings.Join(logs, "\n"))

	// A run cancelled while a backup reads (an express full, so it does
	// read): that backup stops without a point, its job says
	// interrupted, the next member is skipped, no retention runs.
	movePointer(t, r, ps[0].VMGUID, ps[0].ID, 72*time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s3 := &Scheduler{Options: ScheduleOptions{Retry: -1, Limit: func(c context.Context, n int) error { cancel(); return c.Err() }}}
	p3, _ := s3.Plan(r.Catalog, time.Now())
	for i := range p3.Members {
		p3.Members[i].Full = true
	}
	rep3, err := s3.Run(ctx, r, p3)
	if err != nil {
		t.Fatal(err)
	}
	if !rep3.Interrupted || len(rep3.Failures()) != 0 || len(rep3.Retention) != 0 || len(rep3.Runs) != 2 ||
		rep3.Runs[0].Result != RunInterrupted || rep3.Runs[1].Result != RunSkipped {
		t.Errorf("cancelled run: %+v", rep3)
	}
	if ps2, _ := r.ListRecoveryPoints("a"); len(ps2) != 1 {
		t.Errorf("a cancelled run made a recovery point")
	}
	jobs, _ = ListJobs(r.dir)
	if j := jobs[len(jobs)-1]; j.Kind != "backup" || j.Result != JobInterrupted || j.VM != "a" {
		t.Errorf("job of the cancelled backup: %+v", j)
	}
}

func fmtLine(f string, args ...any) string { return strings.TrimRight(fmt.Sprintf(f, args...), "\n") }
