package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
)

// journalFixture is a restore of three files in two directories: two
// originals that exist and one (new.vmgs) that did not exist before.
type journalFixture struct {
	root, jdir string
	items      []restoreItem
	old, new   map[string]string // original -> content ("" = absent)
}

func newJournalFixture(t *testing.T) *journalFixture {
	t.Helper()
	root := t.TempDir()
	f := &journalFixture{root: root, jdir: filepath.Join(root, "repo", restoreJournalDir),
		old: map[string]string{}, new: map[string]string{}}
	for _, d := range []string{"Virtual Hard Disks", "Virtual Machines"} {
		if err := os.MkdirAll(filepath.Join(root, "vm", d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ rel, old string }{
		{"Virtual Hard Disks/disk.vhdx", "old disk"},
		{"Virtual Machines/A.vmcx", "old config"},
		{"Virtual Machines/new.vmgs", ""},
	} {
		p := filepath.Join(root, "vm", filepath.FromSlash(c.rel))
		f.old[p], f.new[p] = c.old, "restored "+c.rel
		if c.old != "" {
			if err := os.WriteFile(p, []byte(c.old), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		f.items = append(f.items, restoreItem{final: p,
			tmp: filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+restoreTempMark+randHex(4))})
	}
	return f
}

// begin starts the journal and writes every temporary (the write phase).
func (f *journalFixture) begin(t *testing.T) *restoreJournal {
	t.Helper()
	j, err := beginRestoreJournal(f.jdir, "guid", "vm", "rp", f.items, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range f.items {
		if err := os.WriteFile(it.tmp, []byte(f.new[it.final]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return j
}

// state reads every original: content, or "" when absent.
func (f *journalFixture) state(t *testing.T) map[string]string {
	t.Helper()
	s := map[string]string{}
	for p := range f.old {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		s[p] = string(b)
	}
	return s
}

// nothingLost checks the state right after a simulated kill: every old
// original's bytes are at its path or under the backup name its journal
// records.
func (f *journalFixture) nothingLost(t *testing.T, j *restoreJournal) {
	t.Helper()
	for _, e := range j.Files {
		want := f.old[e.Original]
		if want == "" {
			continue
		}
		a, _ := os.ReadFile(e.Original)
		b, _ := os.ReadFile(e.Backup)
		if string(a) != want && string(b) != want {
			t.Errorf("%s: original bytes neither at the path (%q) nor in the backup (%q)", e.Original, a, b)
		}
	}
}

// clean checks that no temporary, backup or journal is left.
func (f *journalFixture) clean(t *testing.T) {
	t.Helper()
	for _, d := range []string{filepath.Join(f.root, "vm", "Virtual Hard Disks"), filepath.Join(f.root, "vm", "Virtual Machines"), f.jdir} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.Contains(e.Name(), restoreTempMark) || strings.Contains(e.Name(), restoreBackupMark) || d == f.jdir {
				t.Errorf("left behind: %s", filepath.Join(d, e.Name()))
			}
		}
	}
}

func sameState(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

// crashAt makes the journal steps stop at step n (0: never); it returns a
// pointer to the highest step number reached.
func crashAt(t *testing.T, n int) *int {
	top := 0
	journalCrashHook = func(step int) bool {
		top = max(top, step)
		return step == n
	}
	t.Cleanup(func() { journalCrashHook = nil })
	return &top
}

// commitSteps counts the steps of a full commit and returns the number of
// the commit point step (the save of state "committed").
func commitSteps(t *testing.T) (total, commitPoint int) {
	f := newJournalFixture(t)
	j := f.begin(t)
	var states []string
	journalCrashHook = func(step int) bool {
		states = append(states, j.State)
		return false
	}
	defer func() { journalCrashHook = nil }()
	if err := j.commit(nil); err != nil {
		t.Fatal(err)
	}
	// The hook runs before each step: the first step that sees state
	// "committed" comes right after the commit point.
	for i, s := range states {
		if s == journalCommitted {
			return len(states), i
		}
	}
	t.Fatal("no committed state seen")
	return 0, 0
}

// TestJournalCrashAtEveryStep kills the commit after each of its steps,
// then also kills the recovery after each of its steps, and checks: right
// after the kill no original's bytes are lost; after a completed recovery
// the originals are all unchanged (kill before the commit point) or all
// restored (after it), and no temporary, backup or journal is left.
func TestJournalCrashAtEveryStep(t *testing.T) {
	total, commitPoint := commitSteps(t)
	t.Logf("commit: %d steps, commit point is step %d", total, commitPoint)
	cases, rolledBack, rolledForward := 0, 0, 0
	for n := 1; n <= total+1; n++ { // total+1: no crash
		for m := 0; m <= 8; m++ { // recovery killed at step m (0: not killed)
			t.Run(fmt.Sprintf("commit%d/recover%d", n, m), func(t *testing.T) {
				f := newJournalFixture(t)
				j := f.begin(t)
				crashAt(t, n)
				err := j.commit(nil)
				if n <= total && !errors.Is(err, errSimulatedCrash) {
					t.Fatalf("commit: %v, want the simulated crash", err)
				}
				if n > total && err != nil {
					t.Fatal(err)
				}
				if n <= commitPoint {
					f.nothingLost(t, j)
				}
				j.release() // the "process" is dead
				if m > 0 {
					reached := crashAt(t, m)
					recoverRestoreJournals(f.jdir, nil)
					if *reached < m {
						t.Skip("recovery has fewer steps")
					}
					if n <= commitPoint {
						f.nothingLost(t, j)
					}
				}
				journalCrashHook = nil
				var lines []string
				rec, err := recoverRestoreJournals(f.jdir, func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) })
				if err != nil {
					t.Fatal(err)
				}
				// The journal is gone only once its removal step ran.
				if rec > 1 || len(lines) != rec || (m == 0 && n < total && rec != 1) {
					t.Errorf("recovered %d journals, logged %q", rec, lines)
				}
				got := f.state(t)
				switch {
				case n <= commitPoint:
					if !sameState(got, f.old) {
						t.Errorf("killed before the commit point: %q, want the originals %q", got, f.old)
					}
					rolledBack++
				default:
					if !sameState(got, f.new) {
						t.Errorf("killed after the commit point: %q, want all restored %q", got, f.new)
					}
					rolledForward++
				}
				f.clean(t)
				cases++
			})
		}
	}
	t.Logf("%d cases: %d rolled back, %d rolled forward or complete", cases, rolledBack, rolledForward)
}

// TestJournalKilledWhileWriting: a kill in the write phase (one temporary
// half written, the others not yet created) is rolled back without
// touching the originals; a file that did not exist stays absent.
func TestJournalKilledWhileWriting(t *testing.T) {
	f := newJournalFixture(t)
	j, err := beginRestoreJournal(f.jdir, "guid", "vm", "rp", f.items, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The VHDX writer's partial file, not yet renamed onto the temporary.
	partial := filepath.Join(filepath.Dir(f.items[0].tmp), "."+filepath.Base(f.items[0].tmp)+".tmp-12345")
	os.WriteFile(partial, []byte("half"), 0o644)
	os.WriteFile(f.items[1].tmp, []byte("half"), 0o644)
	j.release()
	if n, err := recoverRestoreJournals(f.jdir, nil); n != 1 || err != nil {
		t.Fatalf("recovered %d, %v", n, err)
	}
	if got := f.state(t); !sameState(got, f.old) {
		t.Errorf("%q, want %q", got, f.old)
	}
	f.clean(t)
}

// TestJournalStaleTempsAndActive: temporaries of a restore killed before
// any journal existed are removed by the next restore of those files (with
// one log line), but not those of a restore running in this process; and
// recovery leaves a running restore's journal alone.
func TestJournalStaleTempsAndActive(t *testing.T) {
	f := newJournalFixture(t)
	dir := filepath.Dir(f.items[0].final)
	stale := filepath.Join(dir, ".disk.vhdx"+restoreTempMark+"deadbeef")
	other := filepath.Join(dir, ".disk.vhdx"+restoreTempMark+"notours") // not our name pattern
	running := f.begin(t)                                               // a restore running in this process
	defer running.discard()
	stalePartial := filepath.Join(dir, "."+filepath.Base(stale)+".tmp-4242")
	runningPartial := filepath.Join(dir, "."+filepath.Base(f.items[0].tmp)+".tmp-4243")
	for _, p := range []string{stale, other, stalePartial, runningPartial} {
		os.WriteFile(p, []byte("x"), 0o644)
	}
	items2 := []restoreItem{{final: f.items[0].final, tmp: filepath.Join(dir, ".disk.vhdx"+restoreTempMark+"00000001")}}
	var lines []string
	j2, err := beginRestoreJournal(f.jdir, "guid2", "vm2", "rp", items2, func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) })
	if err != nil {
		t.Fatal(err)
	}
	defer j2.discard()
	for _, p := range []string{stale, stalePartial} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale %s not removed", p)
		}
	}
	if _, err := os.Stat(runningPartial); err != nil {
		t.Error("the running restore's partial VHDX file was removed")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("a file not matching the temporary pattern was removed")
	}
	if _, err := os.Stat(f.items[0].tmp); err != nil {
		t.Error("the running restore's temporary was removed")
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "removed 2 temporary") {
		t.Errorf("log %q", lines)
	}
	if n, err := recoverRestoreJournals(f.jdir, nil); n != 0 || err != nil {
		t.Errorf("recovered %d running journals (%v)", n, err)
	}
	if _, err := os.Stat(running.path); err != nil {
		t.Error("running journal removed")
	}
}

// TestJournalCommitErrorRollsBack: a real error in the rename phase (a
// temporary gone) rolls back in the process: originals unchanged, nothing
// left, the error returned.
func TestJournalCommitErrorRollsBack(t *testing.T) {
	f := newJournalFixture(t)
	j := f.begin(t)
	os.Remove(f.items[2].tmp) // the last rename fails
	err := j.commit(nil)
	if err == nil || !strings.HasPrefix(err.Error(), "engine: ") {
		t.Fatalf("commit: %v", err)
	}
	if got := f.state(t); !sameState(got, f.old) {
		t.Errorf("%q, want %q", got, f.old)
	}
	f.clean(t)
}

// TestJournalRestoreOriginal goes through Repo.Restore: a restore to
// original killed in its rename phase leaves the originals recoverable;
// the next Restore logs the recovery, completes, and leaves nothing.
func TestJournalRestoreOriginal(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	var logs []string
	r.logf = func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }
	vm := filepath.Join(t.TempDir(), "vm")
	disk := filepath.Join(vm, "Virtual Hard Disks", "base.vhdx")
	cfg := filepath.Join(vm, "Virtual Machines", "8A2B6F6E-1111-2222-3333-444455556666.vmcx")
	os.MkdirAll(filepath.Dir(disk), 0o755)
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	copyFile(t, filepath.Join(td, testdisks.BaseVHDX), disk)
	os.WriteFile(cfg, []byte("config v1"), 0o644)
	backup(t, r, BackupOptions{VM: "j", Sources: []string{vm}})
	// A restored VHDX is synthesized (not the source's bytes): one plain
	// restore to original gives the restored content.
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "j", To: RestoreOriginal}); err != nil {
		t.Fatal(err)
	}
	restored := map[string]string{disk: sha256File(t, disk), cfg: sha256File(t, cfg)}
	// Modify both originals.
	fd, _ := os.OpenFile(disk, os.O_WRONLY, 0)
	fd.WriteAt([]byte("scribble"), 5<<20)
	fd.Close()
	os.WriteFile(cfg, []byte("config v2, changed"), 0o644)
	modified := map[string]string{disk: sha256File(t, disk), cfg: sha256File(t, cfg)}

	// Killed after the first rename of a temporary over an original
	// (a mix on disk), then a check-style recovery.
	crashAt(t, 6) // steps: journal, 2 links, dir sync, disk rename | config rename
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "j", To: RestoreOriginal}); !errors.Is(err, errSimulatedCrash) {
		t.Fatalf("restore: %v", err)
	}
	journalCrashHook = nil
	activeRestores.journals = map[string]bool{} // the killed process's state is gone
	activeRestores.temps = map[string]bool{}
	ls := func(when string) {
		for _, d := range []string{filepath.Dir(disk), filepath.Dir(cfg)} {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				t.Logf("%s: %s", when, e.Name())
			}
		}
	}
	ls("after kill")
	r.recoverBeforeCheck(nil)
	ls("after recovery")
	for p, h := range modified {
		if sha256File(t, p) != h {
			t.Errorf("%s changed by a restore killed before its commit point", p)
		}
	}
	if len(logs) != 1 || !strings.Contains(logs[0], "rolled back") {
		t.Errorf("logs %q", logs)
	}
	// A kill while writing (no rename yet), then the next restore.
	crashAt(t, 1)
	r.Restore(context.Background(), RestoreOptions{VM: "j", To: RestoreOriginal})
	journalCrashHook = nil
	activeRestores.journals = map[string]bool{}
	activeRestores.temps = map[string]bool{}
	res, err := r.Restore(context.Background(), RestoreOptions{VM: "j", To: RestoreOriginal})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 2 {
		t.Errorf("files %v", res.Files)
	}
	for p, h := range restored {
		if sha256File(t, p) != h {
			t.Errorf("%s not restored", p)
		}
	}
	for _, d := range []string{filepath.Dir(disk), filepath.Dir(cfg), filepath.Join(r.dir, restoreJournalDir)} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") || d == filepath.Join(r.dir, restoreJournalDir) {
				t.Errorf("left behind: %s", filepath.Join(d, e.Name()))
			}
		}
	}
	t.Logf("logs: %q", logs)
}

// TestJournalRestoreDirForce: a restore --to DIR --force over the files
// of an earlier restore (changed since) commits through the journal too.
// Killed at every step of its commit, then recovered as the next check
// does: DIR holds either exactly the changed files (killed before the
// commit point) or exactly the restored ones, never a mix, and no
// temporary, backup or journal is left. A restore into an empty
// directory killed in its rename phase leaves the directory empty.
func TestJournalRestoreDirForce(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	vm := filepath.Join(t.TempDir(), "vm")
	disk := filepath.Join(vm, "Virtual Hard Disks", "base.vhdx")
	cfg := filepath.Join(vm, "Virtual Machines", "8A2B6F6E-1111-2222-3333-444455556666.vmcx")
	os.MkdirAll(filepath.Dir(disk), 0o755)
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	copyFile(t, filepath.Join(td, testdisks.BaseVHDX), disk)
	os.WriteFile(cfg, []byte("config v1"), 0o644)
	backup(t, r, BackupOptions{VM: "d", Sources: []string{vm}})

	out := filepath.Join(t.TempDir(), "out")
	files := []string{filepath.Join(out, "Virtual Hard Disks", "base.vhdx"), filepath.Join(out, "Virtual Machines", "8A2B6F6E-1111-2222-3333-444455556666.vmcx")}
	opts := RestoreOptions{VM: "d", To: out, Force: true}
	if _, err := r.Restore(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	hashes := func() map[string]string {
		h := map[string]string{}
		for _, p := range files {
			if _, err := os.Stat(p); err == nil {
				h[p] = sha256File(t, p)
			}
		}
		return h
	}
	restored := hashes()
	change := func() {
		fd, _ := os.OpenFile(files[0], os.O_WRONLY, 0)
		fd.WriteAt([]byte("changed after the restore"), 3<<20)
		fd.Close()
		os.WriteFile(files[1], []byte("config edited by hand"), 0o644)
	}
	change()
	changed := hashes()
	if sameState(changed, restored) {
		t.Fatal("change did not change the files")
	}
	strays := func() []string {
		var s []string
		for _, d := range []string{filepath.Dir(files[0]), filepath.Dir(files[1]), filepath.Join(r.dir, restoreJournalDir)} {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".") || d == filepath.Join(r.dir, restoreJournalDir) {
					s = append(s, e.Name())
				}
			}
		}
		return s
	}
	dead := func() { // what a killed process leaves: nothing in memory
		journalCrashHook = nil
		activeRestores.journals = map[string]bool{}
		activeRestores.temps = map[string]bool{}
	}
	// Step 1 is the "renaming" save: 1..n covers the write phase end,
	// the renames, the commit point and the cleanup.
	rolledBack, rolledForward := 0, 0
	for n := 1; ; n++ {
		reached := crashAt(t, n)
		_, err := r.Restore(context.Background(), opts)
		top := *reached
		dead()
		if err == nil && top < n {
			break // no step n: the restore completed
		}
		if !errors.Is(err, errSimulatedCrash) {
			t.Fatalf("step %d: %v", n, err)
		}
		r.recoverBeforeCheck(nil)
		switch got := hashes(); {
		case sameState(got, changed):
			rolledBack++
		case sameState(got, restored):
			rolledForward++
		default:
			t.Fatalf("killed at commit step %d: a mix after recovery: %v (changed %v, restored %v)", n, got, changed, restored)
		}
		if s := strays(); len(s) > 0 {
			t.Errorf("killed at commit step %d: left after recovery: %v", n, s)
		}
		change()
	}
	if rolledBack == 0 || rolledForward == 0 {
		t.Errorf("rolled back %d, forward %d: the kills missed a side of the commit point", rolledBack, rolledForward)
	}
	t.Logf("%d kills rolled back, %d rolled forward", rolledBack, rolledForward)

	// An empty target killed after the first rename: nothing stays.
	empty := filepath.Join(t.TempDir(), "empty")
	crashAt(t, 4) // steps: renaming save, dir sync (no links: nothing existed), first rename | second rename
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "d", To: empty}); !errors.Is(err, errSimulatedCrash) {
		t.Fatalf("restore into an empty directory: %v", err)
	}
	dead()
	if _, err := os.Stat(filepath.Join(empty, "Virtual Hard Disks", "base.vhdx")); err != nil {
		t.Fatalf("killed after the first rename, but the disk is not in place: %v", err)
	}
	r.recoverBeforeCheck(nil)
	filepath.WalkDir(empty, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("left in the empty target after a rolled-back restore: %s", p)
		}
		return nil
	})
}
