package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/engine"
	"github.com/vmvault/vmvault/internal/testdisks"
)

// agePoint moves vm's newest recovery point age into the past (same
// manifest and data, earlier time and ID): schedule history without
// waiting a day.
func agePoint(t *testing.T, repo, vm string, age time.Duration) {
	t.Helper()
	var list []map[string]any
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "rp", "list", "--repo", repo, "--vm", vm, "--json")), &list); err != nil || len(list) == 0 {
		t.Fatalf("rp list %s: %v %v", vm, list, err)
	}
	last := list[len(list)-1]
	dir := filepath.Join(repo, "catalog", "rps", last["vm_guid"].(string))
	id := last["id"].(string)
	b, err := os.ReadFile(filepath.Join(dir, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	json.Unmarshal(b, &p)
	t0, _ := time.Parse("2006-01-02T150405Z", strings.SplitN(id, ".", 2)[0])
	at := t0.Add(-age)
	nid := at.Format("2006-01-02T150405Z")
	p["id"], p["time"], p["end_time"] = nid, at, at
	nb, _ := json.MarshalIndent(p, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, nid+".json"), nb, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, id+".json")); err != nil {
		t.Fatal(err)
	}
}

// TestCLIScheduleRun: `schedule run` on a repository with real test
// disks. A member backed up by hand is not due; aged by three days it is:
// --dry-run shows it with its sources and changes nothing, --once backs
// it up from those sources and applies the group's retention range (the
// old point goes), and a second --once right after does nothing. A member
// whose source vanished fails with one stderr line and exit 1 while the
// other is still backed up. The service mode (no --once) makes the due
// backup, then stops cleanly on SIGTERM with exit 0.
func TestCLIScheduleRun(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	mustVMV(t, utc, "init", "--repo", repo)
	mustVMV(t, utc, "group", "create", "prod", "--repo", repo, "--retention-days", "2", "--sync-frequency", "24h")
	disk := filepath.Join(td, testdisks.GPTVHDX)
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "web", "--group", "prod", disk)

	if out := mustVMV(t, utc, "schedule", "run", "--repo", repo, "--once", "-q"); !strings.Contains(out, "nothing due") ||
		!strings.Contains(out, "next: ") || !strings.Contains(out, "00:00:00 UTC: prod/web (sync)") {
		t.Errorf("right after a manual backup:\n%s", out)
	}

	agePoint(t, repo, "web", 72*time.Hour)
	old := rpIDs(t, repo, "web")
	dry := mustVMV(t, utc, "schedule", "run", "--repo", repo, "--dry-run")
	if !strings.Contains(dry, "web: DUE: sync due since") || !strings.Contains(dry, "sources of its latest recovery point: "+disk) ||
		!strings.Contains(dry, "then: forget by the retention range") {
		t.Errorf("dry run:\n%s", dry)
	}
	if ids := rpIDs(t, repo, "web"); strings.Join(ids, ",") != strings.Join(old, ",") {
		t.Errorf("dry run changed the recovery points: %v -> %v", old, ids)
	}

	start := time.Now().UTC().Truncate(time.Second)
	out := mustVMV(t, utc, "schedule", "run", "--repo", repo, "--once", "-q")
	if !strings.Contains(out, "prod/web: recovery point ") || !strings.Contains(out, "prod: retention (keep retention 2d): forgot 1 recovery point(s), kept 1") {
		t.Errorf("--once:\n%s", out)
	}
	ids := rpIDs(t, repo, "web")
	if len(ids) != 1 || ids[0] == old[0] {
		t.Fatalf("after --once: points %v (before %v): want one new point, the aged one forgotten", ids, old)
	}
	if made, _ := time.Parse("2006-01-02T150405Z", ids[0]); made.Before(start) {
		t.Errorf("new point %s is older than the run (%v)", ids[0], start)
	}
	var jobs []map[string]any
	json.Unmarshal([]byte(mustVMV(t, utc, "jobs", "--repo", repo, "--json")), &jobs)
	var got []string
	for _, j := range jobs {
		s := j["kind"].(string) + ":" + j["result"].(string)
		if tr, ok := j["trigger"].(string); ok {
			s += ":" + tr
		}
		got = append(got, s)
	}
	if strings.Join(got, " ") != "backup:ok backup:ok:sync forget:ok" {
		t.Errorf("job records: %v", got)
	}
	if tbl := mustVMV(t, utc, "jobs", "--repo", repo); !strings.Contains(tbl, "backup (sync)") {
		t.Errorf("jobs table:\n%s", tbl)
	}

	// Right after: nothing to do, nothing made.
	if out := mustVMV(t, utc, "schedule", "run", "--repo", repo, "--once", "-q"); !strings.Contains(out, "nothing due") {
		t.Errorf("second --once:\n%s", out)
	}
	if again := rpIDs(t, repo, "web"); len(again) != 1 || again[0] != ids[0] {
		t.Errorf("second --once made a recovery point: %v", again)
	}

	// A member whose source is gone fails alone.
	src := filepath.Join(dir, "db.raw")
	copyFileT(t, filepath.Join(td, testdisks.NoPartRaw), src)
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "db", "--group", "prod", src)
	os.Remove(src)
	agePoint(t, repo, "db", 72*time.Hour)
	agePoint(t, repo, "web", 72*time.Hour)
	r := vmv(t, utc, "schedule", "run", "--repo", repo, "--once", "-q", "--json")
	wantFail(t, r, "schedule: prod/db: engine: backup: source: stat "+src)
	var rep struct {
		Runs []struct {
			VM, Result, RP string
			Sources        []string
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	if len(rep.Runs) != 2 || rep.Runs[0].VM != "db" || rep.Runs[0].Result != "failed" || rep.Runs[1].VM != "web" ||
		rep.Runs[1].Result != "ok" || rep.Runs[1].Sources[0] != disk {
		t.Errorf("runs: %+v", rep.Runs)
	}
	if ids := rpIDs(t, repo, "web"); len(ids) != 1 || ids[0] != rep.Runs[1].RP {
		t.Errorf("web after the failing pass: %v, want only %s", ids, rep.Runs[1].RP)
	}
	// The failed member waits the retry delay: the next pass is clean. The
	// next line names db (due again after the 30-minute retry delay) unless
	// web's daily sync at midnight comes first (a run in the last half hour
	// of the UTC day).
	nextWho := "prod/db (sync)"
	if now := time.Now().UTC(); now.Add(engine.DefaultRetryDelay).Day() != now.Day() {
		nextWho = "00:00:00 UTC: prod/web (sync)"
	}
	if out := mustVMV(t, utc, "schedule", "run", "--repo", repo, "--once", "-q"); !strings.Contains(out, "nothing due") || !strings.Contains(out, nextWho) {
		t.Errorf("pass after a failure (want next: %s):\n%s", nextWho, out)
	}

	// The service: runs what is due, then sleeps until SIGTERM.
	agePoint(t, repo, "web", 72*time.Hour)
	cmd := exec.Command(vmvaultBin(t), "schedule", "run", "--repo", repo)
	cmd.Env = append(os.Environ(), utc...)
	var so, se lockedBuf
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if ids := rpIDs(t, repo, "web"); len(ids) == 1 && ids[0] != rep.Runs[1].RP {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the service made no recovery point:\n%s%s", so.String(), se.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Retention ran when its line is out; then it sleeps.
	for !strings.Contains(se.String(), "schedule: next: ") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Errorf("service after SIGTERM: %v\n%s", err, se.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("service did not stop on SIGTERM")
	}
	if !strings.Contains(se.String(), "stopped by a signal") || !strings.Contains(so.String(), "prod/web: recovery point") {
		t.Errorf("service output:\n%s\n%s", so.String(), se.String())
	}
}

// lockedBuf is a buffer a running command writes while the test reads it.
type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *lockedBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lockedBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func copyFileT(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCLIScheduleHelp: the help teaches (where sources come from, the
// modes, examples) and bad flags fail with one line.
func TestCLIScheduleHelp(t *testing.T) {
	out := mustVMV(t, nil, "schedule", "run", "--help")
	for _, want := range []string{"latest recovery point", "vmvault group sources", "--once", "--dry-run", "SIGTERM", "Examples:", "vmvault schedule run --repo /srv/vmvault --once"} {
		if !strings.Contains(out, want) {
			t.Errorf("schedule run --help lacks %q", want)
		}
	}
	repo := filepath.Join(t.TempDir(), "repo")
	mustVMV(t, nil, "init", "--repo", repo)
	wantFail(t, vmv(t, nil, "schedule", "run", "--repo", repo, "--once", "--dry-run"), "not both")
	wantFail(t, vmv(t, nil, "schedule", "run", "--repo", repo, "--once", "--retry-after", "soon"), "--retry-after")
	wantFail(t, vmv(t, nil, "schedule", "run", "--repo", repo, "--once", "--group", "nope"), "unknown protection group")
	wantFail(t, vmv(t, nil, "schedule", "run", "--once"), "--repo is required")
	if out := mustVMV(t, nil, "schedule", "run", "--repo", repo, "--once"); !strings.Contains(out, "nothing due") || !strings.Contains(out, "no group has members") {
		t.Errorf("empty repository:\n%s", out)
	}
}
