package engine

// Crash-safe commit of a restore.
//
// A restore --to original replaces several files (disks, configuration
// files), often in several directories; a restore --to DIR --force may
// overwrite files of an earlier restore there, and even into an empty
// directory it creates several files. No file system renames several
// files atomically, so every restore commits all-or-nothing through a
// small durable journal in the repository catalog
// (<repo>/catalog/restore-journal/<vm-guid>-<rand>.json), written with
// temp+fsync+rename+dir fsync at every state change:
//
//	state "writing"   written before the first temporary file is created;
//	                  lists every (original, temp, backup) path. The
//	                  originals are untouched.
//	state "renaming"  written once every temporary is complete and
//	                  fsynced; records which originals existed. Then:
//	                  pass 1 hard-links each original to its backup name
//	                  (the original path never disappears; rename when the
//	                  file system has no hard links), dir fsync; pass 2
//	                  renames each temporary over its original, dir fsync.
//	state "committed" the commit point. Then the backups are removed and
//	                  the journal deleted.
//
// Recovery (recoverRestoreJournals: at the start of every Restore and
// Check; the chunkstore lock makes the repository single-process, so a
// journal not active in this process is a leftover of a killed one) rolls
// a "writing" or "renaming" journal BACK (backups renamed over the
// originals, temporaries removed, files that did not exist before removed)
// and a "committed" one FORWARD (backups removed). Every recovery step is
// idempotent, so a crash during recovery is recovered by the next one.
//
// Guarantee: after a kill at any moment and the next restore, check or
// backup of the repository, the target files are either all as before
// (existing ones unchanged, new ones absent, no temporaries) or, when the
// kill came after the commit point, all restored; never a mix, and no
// existing file's bytes are ever lost (until the commit point each one is
// at its path or under its backup name, recorded in the durable journal).
// "Original" below means whatever file a restore replaces: the VM's own
// file for --to original, a file already in the target directory for
// --to DIR --force.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// restoreJournalDir holds the journals of restores to original files.
const restoreJournalDir = "catalog/restore-journal"

// Journal states, in order.
const (
	journalWriting   = "writing"
	journalRenaming  = "renaming"
	journalCommitted = "committed"
)

// Name parts of the files a restore puts beside an original.
const (
	restoreTempMark   = ".vmvault-restore-"
	restoreBackupMark = ".vmvault-orig-"
)

// restoreJournal is the durable record of one restore to original files.
type restoreJournal struct {
	Version int            `json:"version"`
	VM      string         `json:"vm"`
	RP      string         `json:"rp"`
	State   string         `json:"state"`
	Time    time.Time      `json:"time"`
	Files   []journalEntry `json:"files"`

	path string // the journal file
}

// journalEntry is one file of the restore.
type journalEntry struct {
	Original string `json:"original"`
	Temp     string `json:"temp"`
	Backup   string `json:"backup"`
	// Existed says the original existed when the rename phase began (set
	// in state "renaming"); a rollback removes a file that did not.
	Existed bool `json:"existed"`
}

// activeRestores are the journals and temporaries of restores running in
// this process: a restore of several VMs at once (--parallel) must not
// roll back its sibling's journal as a leftover.
var activeRestores = struct {
	sync.Mutex
	journals map[string]bool
	temps    map[string]bool
}{journals: map[string]bool{}, temps: map[string]bool{}}

// journalCrashHook, set by tests only, is asked before each commit or
// recovery step (numbered from 1); true stops there as a kill would, with
// no cleanup.
var journalCrashHook func(step int) bool

// errSimulatedCrash is what a step run returns when journalCrashHook stops it.
var errSimulatedCrash = errors.New("engine: simulated crash")

// stepDelay slows every commit and recovery step when the environment
// sets VMVAULT_TEST_COMMIT_STEP_DELAY (a Go duration). Test use only: the
// kill test of the real binary (cmd/vmvault) needs some SIGKILLs to land
// inside the rename phase, which otherwise lasts milliseconds.
var stepDelay = func() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("VMVAULT_TEST_COMMIT_STEP_DELAY"))
	return d
}()

// runSteps runs steps in order, stopping at the first error or where the
// test hook says.
func runSteps(steps []func() error) error {
	for i, s := range steps {
		if stepDelay > 0 {
			time.Sleep(stepDelay)
		}
		if journalCrashHook != nil && journalCrashHook(i+1) {
			return errSimulatedCrash
		}
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// beginRestoreJournal removes temporaries left beside the targets by an
// earlier killed restore (one from before the journal existed, or of an
// older version), then durably records the restore in state "writing"
// before any temporary is created, so a kill while writing leaves nothing
// that the next recovery cannot find.
//
// The journal file is named after guid (unique per restore by a random
// suffix); vm and rp are for the recovery message.
func beginRestoreJournal(dir, guid, vm, rp string, items []restoreItem, logf func(string, ...any)) (*restoreJournal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("engine: restore journal: %w", err)
	}
	if n := removeStaleTemps(items); n > 0 && logf != nil {
		logf("restore: removed %d temporary files left by an interrupted restore", n)
	}
	j := &restoreJournal{Version: 1, VM: vm, RP: rp, State: journalWriting, Time: time.Now().UTC()}
	for _, it := range items {
		j.Files = append(j.Files, journalEntry{
			Original: it.final,
			Temp:     it.tmp,
			Backup:   filepath.Join(filepath.Dir(it.final), "."+filepath.Base(it.final)+restoreBackupMark+randHex(4)),
		})
	}
	j.path = filepath.Join(dir, guid+"-"+randHex(4)+".json")
	activeRestores.Lock()
	activeRestores.journals[j.path] = true
	for _, f := range j.Files {
		activeRestores.temps[f.Temp] = true
	}
	activeRestores.Unlock()
	if err := j.save(); err != nil {
		j.release()
		return nil, err
	}
	return j, nil
}

// removeStaleTemps removes the ".<name>.vmvault-restore-<8 hex>" files
// beside each target that no running restore of this process owns, and
// the VHDX writer's partial files of those ("." + that + ".tmp-*"). Backup
// files are never removed here: only a journal may decide about those.
func removeStaleTemps(items []restoreItem) int {
	activeRestores.Lock()
	defer activeRestores.Unlock()
	n := 0
	seen := map[string]bool{}
	for _, it := range items {
		dir, base := filepath.Dir(it.final), filepath.Base(it.final)
		prefix := "." + base + restoreTempMark
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			name := e.Name()
			p := filepath.Join(dir, name)
			tmpName, ok := restoreTempOf(name, prefix)
			if !ok || seen[p] || activeRestores.temps[filepath.Join(dir, tmpName)] {
				continue
			}
			seen[p] = true
			if os.Remove(p) == nil {
				n++
			}
		}
	}
	return n
}

// restoreTempOf tells whether name is a restore temporary (prefix plus 8
// hex digits) or a VHDX writer's partial file of one ("." + temporary +
// ".tmp-" + digits), and returns the temporary's name.
func restoreTempOf(name, prefix string) (string, bool) {
	if strings.HasPrefix(name, prefix) && isHex8(name[len(prefix):]) {
		return name, true
	}
	if i := strings.LastIndex(name, ".tmp-"); i > 0 && name[0] == '.' {
		if t := name[1:i]; strings.HasPrefix(t, prefix) && isHex8(t[len(prefix):]) {
			return t, true
		}
	}
	return "", false
}

func isHex8(s string) bool {
	if len(s) != 8 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// save writes the journal durably (temp+fsync+rename+dir fsync).
func (j *restoreJournal) save() error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("engine: restore journal: %w", err)
	}
	if err := writeFileAtomic(j.path, b, false); err != nil {
		return fmt.Errorf("engine: restore journal: %w", err)
	}
	return nil
}

// release forgets the journal as active in this process.
func (j *restoreJournal) release() {
	activeRestores.Lock()
	delete(activeRestores.journals, j.path)
	for _, f := range j.Files {
		delete(activeRestores.temps, f.Temp)
	}
	activeRestores.Unlock()
}

// discard ends a restore that failed while writing (the originals were
// never touched): temporaries and journal removed. Nil-safe, so the
// restore's cleanup can call it in both modes.
func (j *restoreJournal) discard() {
	if j == nil {
		return
	}
	defer j.release()
	for _, f := range j.Files {
		removeTemp(f.Temp)
	}
	if os.Remove(j.path) == nil {
		syncDir(filepath.Dir(j.path))
	}
}

// dirs are the distinct directories of the originals (sorted: a stable
// fsync order).
func (j *restoreJournal) dirs() []string {
	m := map[string]bool{}
	for _, f := range j.Files {
		m[filepath.Dir(f.Original)] = true
	}
	ds := make([]string, 0, len(m))
	for d := range m {
		ds = append(ds, d)
	}
	sort.Strings(ds)
	return ds
}

func (j *restoreJournal) syncDirs() error {
	for _, d := range j.dirs() {
		if err := syncDir(d); err != nil {
			return fmt.Errorf("sync %s: %w", d, err)
		}
	}
	return nil
}

// commit puts every complete temporary in place of its original, all or
// nothing (see the file comment). An error before the commit point rolls
// back in this process and is returned; if even the rollback fails, the
// journal stays for the next restore or check to finish it. An error after
// the commit point only leaves backups for the next recovery to remove:
// the restore did happen, so it is logged, not returned.
func (j *restoreJournal) commit(logf func(string, ...any)) error {
	// The temporaries' directory entries must be durable before the
	// journal says they exist: a rollback trusts that.
	if err := j.syncDirs(); err != nil {
		return j.abort(fmt.Errorf("engine: restore: %w", err), logf)
	}
	for i := range j.Files {
		_, err := os.Lstat(j.Files[i].Original)
		switch {
		case err == nil:
			j.Files[i].Existed = true
		case errors.Is(err, os.ErrNotExist):
			j.Files[i].Existed = false
		default:
			return j.abort(fmt.Errorf("engine: restore: %w", err), logf)
		}
	}
	var steps []func() error
	steps = append(steps, func() error { j.State = journalRenaming; return j.save() })
	for _, f := range j.Files {
		if f.Existed {
			steps = append(steps, func() error { return keepOriginal(f.Original, f.Backup) })
		}
	}
	steps = append(steps, j.syncDirs)
	for _, f := range j.Files {
		steps = append(steps, func() error { return os.Rename(f.Temp, f.Original) })
	}
	steps = append(steps, j.syncDirs)
	committed := len(steps) + 1 // the step number of the commit point
	steps = append(steps, func() error { j.State = journalCommitted; return j.save() })
	steps = append(steps, j.finishSteps()...)

	var done int
	err := runSteps(countSteps(steps, &done))
	switch {
	case err == nil:
		j.release()
		return nil
	case errors.Is(err, errSimulatedCrash):
		return err
	case done == committed-1:
		// Recording the commit failed, maybe after the journal file was
		// replaced (a failed dir fsync): on disk it says "renaming" or
		// "committed", and the files are all restored with every backup
		// kept, which suits both. Rolling back here could be cut short
		// and then rolled forward (a mix), so the next recovery decides.
		j.release()
		return fmt.Errorf("engine: restore: recording the commit: %w; the next restore or check of this repository finishes or rolls back the restore (journal %s)", err, j.path)
	case done >= committed:
		// Committed: the restore stands; the leftovers go at the next
		// recovery.
		j.release()
		if logf != nil {
			logf("restore: committed, but cleaning up failed (%v); the next restore or check finishes it", err)
		}
		return nil
	}
	return j.abort(fmt.Errorf("engine: restore: %w", err), logf)
}

// countSteps wraps steps so *done counts the ones that succeeded.
func countSteps(steps []func() error, done *int) []func() error {
	out := make([]func() error, len(steps))
	for i, s := range steps {
		out[i] = func() error {
			if err := s(); err != nil {
				return err
			}
			*done++
			return nil
		}
	}
	return out
}

// abort rolls back after an error before the commit point.
func (j *restoreJournal) abort(err error, logf func(string, ...any)) error {
	defer j.release()
	// Commit calls abort only with every temporary complete and Existed
	// set, so the rename-phase rollback is right whatever step failed.
	if rerr := runSteps(j.rollbackSteps(true)); rerr != nil {
		return fmt.Errorf("%w; rollback failed too (%v): the next restore or check of this repository rolls it back (journal %s)", err, rerr, j.path)
	}
	return err
}

// keepOriginal puts the original under its backup name: a hard link, so
// the original path keeps its file until the temporary replaces it; a
// rename where the file system has no hard links.
func keepOriginal(orig, backup string) error {
	if err := os.Link(orig, backup); err == nil {
		return nil
	} else if errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Rename(orig, backup)
}

// putBack renames backup over orig. When both are still links to the same
// file (killed before orig was replaced) rename does nothing at all
// (POSIX), so the backup link is removed instead. A missing backup means
// orig was never replaced or is already back.
func putBack(backup, orig string) error {
	bi, err := os.Lstat(backup)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if oi, err := os.Lstat(orig); err == nil && os.SameFile(bi, oi) {
		return os.Remove(backup)
	}
	return os.Rename(backup, orig)
}

// rollbackSteps undo a journal that did not reach the commit point. Each
// step is idempotent (a crash during the rollback is rolled back again):
//   - an original that existed and has a backup gets it back by rename
//     (atomic over whatever is at the path: the restored file, or the same
//     inode when only the link was made); no backup means the original was
//     never touched or is already back;
//   - an original that did not exist is removed when its temporary is gone
//     (the temporary was renamed there: it was complete and durable when
//     the rename phase began);
//   - temporaries are removed.
//
// renamed says the rename phase may have begun (journal state "renaming"):
// only then were Existed recorded and every temporary complete, which the
// first two rules rely on. Before it (state "writing") temporaries may not
// exist yet, and only they are removed.
func (j *restoreJournal) rollbackSteps(renamed bool) []func() error {
	var steps []func() error
	for _, f := range j.Files {
		steps = append(steps, func() error {
			if renamed {
				if f.Existed {
					if err := putBack(f.Backup, f.Original); err != nil {
						return err
					}
				} else if _, err := os.Lstat(f.Temp); errors.Is(err, os.ErrNotExist) {
					if err := os.Remove(f.Original); err != nil && !errors.Is(err, os.ErrNotExist) {
						return err
					}
				}
			}
			return removeTemp(f.Temp)
		})
	}
	steps = append(steps, j.syncDirs)
	steps = append(steps, j.removeSteps()...)
	return steps
}

// removeTemp removes a restore temporary and the partial file the VHDX
// writer may have left beside it: vhdx.WriteFile writes
// "."+name+".tmp-*" and renames it onto the temporary only when complete,
// so a kill while writing a disk leaves that one.
func removeTemp(tmp string) error {
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dir, prefix := filepath.Dir(tmp), "."+filepath.Base(tmp)+".tmp-"
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// finishSteps complete a committed journal: backups and any temporary
// removed, then the journal.
func (j *restoreJournal) finishSteps() []func() error {
	var steps []func() error
	for _, f := range j.Files {
		steps = append(steps, func() error {
			if err := os.Remove(f.Backup); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return removeTemp(f.Temp)
		})
	}
	steps = append(steps, j.syncDirs)
	steps = append(steps, j.removeSteps()...)
	return steps
}

// removeSteps delete the journal durably: the last step of a commit, a
// rollback or a roll-forward.
func (j *restoreJournal) removeSteps() []func() error {
	return []func() error{
		func() error {
			if err := os.Remove(j.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		},
		func() error { return syncDir(filepath.Dir(j.path)) },
	}
}

// recoverRestoreJournals finishes every leftover journal in dir (see the
// file comment): rolled back before the commit point, forward after it.
// It logs one line per journal and returns how many it recovered; it goes
// on past a failing journal and returns the first error.
func recoverRestoreJournals(dir string, logf func(string, ...any)) (int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("engine: restore journal: %w", err)
	}
	var firstErr error
	n := 0
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		activeRestores.Lock()
		active := activeRestores.journals[path]
		// A journal temporary (".<name>.json.tmp-*") of a running save.
		for jp := range activeRestores.journals {
			if strings.HasPrefix(name, "."+filepath.Base(jp)+".tmp-") {
				active = true
			}
		}
		activeRestores.Unlock()
		if active {
			continue
		}
		if strings.HasPrefix(name, ".") {
			// A journal save killed before its rename: the journal it
			// would have replaced (if any) is still the truth.
			os.Remove(path)
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		if err := recoverJournal(path, logf); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		n++
	}
	return n, firstErr
}

// recoverJournal rolls one leftover journal back or forward.
func recoverJournal(path string, logf func(string, ...any)) error {
	var j restoreJournal
	if err := readJSON(path, &j); err != nil {
		return fmt.Errorf("engine: restore journal: %w", err)
	}
	j.path = path
	var steps []func() error
	var what string
	switch j.State {
	case journalWriting:
		steps, what = j.rollbackSteps(false), "rolled back (killed while writing; originals untouched)"
	case journalRenaming:
		steps, what = j.rollbackSteps(true), "rolled back (killed before its commit point; originals put back)"
	case journalCommitted:
		steps, what = j.finishSteps(), "rolled forward (killed after its commit point; restore complete)"
	default:
		return fmt.Errorf("engine: restore journal %s: state %q: %w", path, j.State, ErrCorrupt)
	}
	if err := runSteps(steps); err != nil {
		return fmt.Errorf("engine: recover interrupted restore of %s %s (journal %s): %w", j.VM, j.RP, path, err)
	}
	if logf != nil {
		logf("recovered an interrupted restore of VM %s (recovery point %s, %d files): %s", j.VM, j.RP, len(j.Files), what)
	}
	return nil
}

// recoverRestores recovers the repository's leftover restore journals;
// Restore and Check call it first.
func (r *Repo) recoverRestores(logf func(string, ...any)) error {
	_, err := recoverRestoreJournals(filepath.Join(r.dir, restoreJournalDir), logf)
	return err
}

// restoreLogf is where a restore's recovery messages go: the restore's
// Logf, else the repository's (the CLI prints that on stderr).
func (r *Repo) restoreLogf(o RestoreOptions) func(string, ...any) {
	if o.Logf != nil {
		return o.Logf
	}
	return r.logf
}

// recoverBeforeRestore recovers leftover journals before a restore. A
// restore to original files refuses to run over an unrecovered journal
// (its files may be among them); a restore into a directory, maybe the
// disaster-recovery path, only logs the problem.
func (r *Repo) recoverBeforeRestore(o RestoreOptions) error {
	logf := r.restoreLogf(o)
	err := r.recoverRestores(logf)
	if err != nil && o.To != RestoreOriginal {
		if logf != nil {
			logf("restore: %v", err)
		}
		return nil
	}
	return err
}

// beginRestore starts the journal of a restore, to the original files or
// into a directory alike.
//
// A journal that recovery could not finish (recoverBeforeRestore lets a
// restore into a directory run past it) must not share a file with this
// restore: its later rollback would put its backup over our result.
func (r *Repo) beginRestore(o RestoreOptions, p *Pointer, m *Manifest, items []restoreItem) (*restoreJournal, error) {
	if err := stuckJournalOverlap(filepath.Join(r.dir, restoreJournalDir), items); err != nil {
		return nil, err
	}
	return beginRestoreJournal(filepath.Join(r.dir, restoreJournalDir), p.VMGUID, m.VM, p.ID, items, r.restoreLogf(o))
}

// recoverBeforeCheck recovers leftover journals when a check opens the
// repository. A journal it cannot finish is logged, not a check failure:
// the repository itself is fine, and the next restore retries it.
func (r *Repo) recoverBeforeCheck(logf func(string, ...any)) {
	if logf == nil {
		logf = r.logf
	}
	if err := r.recoverRestores(logf); err != nil && logf != nil {
		logf("check: %v", err)
	}
}

// stuckJournalOverlap fails when a journal in dir that is not active in
// this process lists one of the items' targets.
func stuckJournalOverlap(dir string, items []restoreItem) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // no journal directory: nothing stuck
	}
	targets := map[string]bool{}
	for _, it := range items {
		targets[it.final] = true
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		activeRestores.Lock()
		active := activeRestores.journals[path]
		activeRestores.Unlock()
		if active || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		var j restoreJournal
		if readJSON(path, &j) != nil {
			continue
		}
		for _, f := range j.Files {
			if targets[f.Original] {
				return fmt.Errorf("engine: restore: %s belongs to an interrupted restore that could not be recovered (journal %s); fix what the recovery reported, then run vmvault check", f.Original, path)
			}
		}
	}
	return nil
}
