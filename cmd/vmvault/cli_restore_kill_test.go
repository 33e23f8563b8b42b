package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// killJournal is the part of engine's restore journal the test reads.
type killJournal struct {
	State string `json:"state"`
	Files []struct {
		Original string `json:"original"`
		Temp     string `json:"temp"`
		Backup   string `json:"backup"`
		Existed  bool   `json:"existed"`
	} `json:"files"`
}

// TestCLIKillDuringRestore SIGKILLs `restore --to original` of a VM (VHDX
// disk plus configuration files in two directories) at random moments
// spread over the whole restore. After each kill: no original's bytes are
// lost (each is at its path or under the backup name the journal
// records); after the recovery that the next `check` runs (one line on
// stderr), the originals are all byte-identical to their pre-restore state
// or, only when the kill came after the commit point, all restored; no
// temporary, backup or journal is left. Finally a killed restore is
// followed by a plain restore, which recovers, completes and leaves
// nothing behind. Half the runs slow each commit step
// (VMVAULT_TEST_COMMIT_STEP_DELAY) so kills land in the rename phase too.
func TestCLIKillDuringRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	td := testdisks.Dir(t)
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	const guid = "5D2C8E4A-7B1F-4C3D-9E2A-1F0B3C4D5E6F"
	disk := filepath.Join(vm, "Virtual Hard Disks", "gpt.vhdx")
	files := []string{disk}
	for _, ext := range []string{".vmcx", ".vmgs", ".vmrs"} {
		files = append(files, filepath.Join(vm, "Virtual Machines", guid+ext))
	}
	sort.Strings(files)
	os.MkdirAll(filepath.Dir(disk), 0o755)
	os.MkdirAll(filepath.Join(vm, "Virtual Machines"), 0o755)
	gpt, err := os.ReadFile(filepath.Join(td, testdisks.GPTVHDX))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(disk, gpt, 0o644)
	rng := rand.New(rand.NewPCG(11, 12))
	for i, p := range files[1:] {
		b := make([]byte, 4096<<i)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		os.WriteFile(p, b, 0o644)
	}
	killDuringRestore(t, dir, vm, files, rng)
}

// TestCLIKillDuringChainRestore is TestCLIKillDuringRestore for a VM
// whose disk is a checkpoint chain (base.vhdx <- child.avhdx <- top.avhdx):
// restore --to original rewrites all three chain files (the data into the
// base, the checkpoints as empty differencing disks) and the
// configuration, all or nothing across a SIGKILL.
func TestCLIKillDuringChainRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	td := testdisks.Dir(t)
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	const guid = "7E3D9F5B-8C2A-4D4E-AF3B-2A1C4D5E6F70"
	vhd := filepath.Join(vm, "Virtual Hard Disks")
	base, child, top := filepath.Join(vhd, "base.vhdx"), filepath.Join(vhd, "child.avhdx"), filepath.Join(vhd, "top.avhdx")
	cfg := filepath.Join(vm, "Virtual Machines", guid+".vmcx")
	os.MkdirAll(vhd, 0o755)
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	for src, dst := range map[string]string{testdisks.BaseVHDX: base, testdisks.ChildAVHDX: child} {
		b, err := os.ReadFile(filepath.Join(td, src))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(dst, b, 0o644)
	}
	// A fresh checkpoint on top: empty, as Hyper-V creates one.
	c, err := vhdx.Open(child)
	if err != nil {
		t.Fatal(err)
	}
	id := c.Identity()
	c.Close()
	err = vhdx.WriteDiffFile(context.Background(), top,
		vdisk.Identity{DiskID: vdisk.GUID{0x7e, 15: 1}, DataWriteGUID: vdisk.GUID{0x7e, 15: 2}, VirtualSize: id.VirtualSize, LogicalSectorSize: id.LogicalSectorSize},
		vhdx.DiffParent{Linkage: id.DataWriteGUID, RelativePath: `.\child.avhdx`}, vhdx.SynthOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg, []byte("vmcx of the chain VM"), 0o644)
	files := []string{base, child, top, cfg}
	sort.Strings(files)
	killDuringRestore(t, dir, vm, files, rand.New(rand.NewPCG(13, 14)))
}

// killDuringRestore backs up the VM folder vm into dir/repo, then kills
// restores --to original of it as TestCLIKillDuringRestore describes;
// files are every file the restore writes; rng picks the kill moments.
func killDuringRestore(t *testing.T, dir, vm string, files []string, rng *rand.Rand) {
	repo := filepath.Join(dir, "repo")
	mustVMV(t, nil, "init", "--repo", repo, "--data-shards", "2", "--parity-shards", "1")
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "kv", vm)

	hashes := func() map[string]string {
		h := map[string]string{}
		for _, p := range files {
			if _, err := os.Stat(p); err == nil {
				h[p] = fileSHA(t, p)
			} else {
				h[p] = ""
			}
		}
		return h
	}
	restoreArgs := []string{"restore", "-q", "--repo", repo, "--vm", "kv", "--to", "original"}
	// The restored content: a restored VHDX is synthesized, not the
	// source's bytes, so one complete restore tells what "restored" is,
	// and how long a restore takes (the kills are spread over that).
	start := time.Now()
	mustVMV(t, nil, restoreArgs...)
	plain := time.Since(start)
	restored := hashes()

	// The originals as the user changed them after the backup: what every
	// killed restore must leave untouched (kept in pristine/ to reset).
	pristine := filepath.Join(dir, "pristine")
	os.MkdirAll(pristine, 0o755)
	modify := func() {
		for i, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			for j := 0; j < len(b); j += 1 << 20 {
				b[j] ^= 0x5a // every MiB, so each file differs
			}
			b[len(b)-1] ^= 0xa5
			os.WriteFile(p, b, 0o644)
			os.WriteFile(filepath.Join(pristine, fmt.Sprint(i)), b, 0o644)
		}
	}
	reset := func() {
		for i, p := range files {
			b, _ := os.ReadFile(filepath.Join(pristine, fmt.Sprint(i)))
			os.WriteFile(p, b, 0o644)
		}
	}
	modify()
	modified := hashes()
	for _, p := range files {
		if modified[p] == restored[p] {
			t.Fatalf("%s: modification did not change it", p)
		}
	}
	slowEnv := []string{"VMVAULT_TEST_COMMIT_STEP_DELAY=40ms"}
	start = time.Now()
	mustVMV(t, slowEnv, restoreArgs...)
	slow := time.Since(start)
	t.Logf("uncontended restore: %v; with 40ms commit steps: %v", plain, slow)
	reset()

	journalDir := filepath.Join(repo, "catalog", "restore-journal")
	readJournal := func() (*killJournal, int) {
		ents, _ := os.ReadDir(journalDir)
		var j *killJournal
		n := 0
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			n++
			var kj killJournal
			b, err := os.ReadFile(filepath.Join(journalDir, e.Name()))
			if err != nil || json.Unmarshal(b, &kj) != nil {
				t.Fatalf("journal %s unreadable: %v", e.Name(), err)
			}
			j = &kj
		}
		return j, n
	}
	strays := func() []string {
		var s []string
		dirs := []string{journalDir}
		for _, p := range files {
			if !slices.Contains(dirs, filepath.Dir(p)) {
				dirs = append(dirs, filepath.Dir(p))
			}
		}
		for _, d := range dirs {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".") || d == journalDir {
					s = append(s, filepath.Join(d, e.Name()))
				}
			}
		}
		return s
	}
	same := func(a, b map[string]string) bool {
		for _, p := range files {
			if a[p] != b[p] {
				return false
			}
		}
		return true
	}

	// killRun starts a restore, SIGKILLs it after delay and returns the
	// phase it was in, judged from what it left.
	killRun := func(run int, env []string, delay time.Duration) (phase string, j *killJournal) {
		cmd := exec.Command(vmvaultBin(t), restoreArgs...)
		cmd.Env = append(os.Environ(), env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d: restore failed: %v\n%s", run, err, stderr.String())
			}
			return "completed", nil
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
			if err := <-done; err == nil {
				return "completed", nil
			} else if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) {
				t.Fatal(err)
			}
		}
		j, n := readJournal()
		if n > 1 {
			t.Fatalf("run %d: %d journals", run, n)
		}
		switch {
		case j != nil:
			return j.State, j
		case same(hashes(), restored):
			return "after-journal-removed", nil
		default:
			return "before-journal", nil
		}
	}

	// At least 12 runs actually killed (a run that finishes before its
	// kill counts, but not as a kill), at most 30 runs.
	phases := map[string]int{}
	kills, runs := 0, 0
	for run := 0; kills < 12 && run < 30; run++ {
		runs++
		env, span := []string(nil), plain
		if run%2 == 1 {
			env, span = slowEnv, slow
		}
		delay := time.Duration(rng.Int64N(int64(span)))
		phase, j := killRun(run, env, delay)
		phases[phase]++
		if phase != "completed" {
			kills++
		}
		t.Logf("run %d: killed after %v (restore ~%v): %s", run, delay.Round(time.Millisecond), span.Round(time.Millisecond), phase)
		afterCommit := phase == "committed" || phase == "after-journal-removed" || phase == "completed"

		// Right after the kill, before any recovery: nothing lost.
		if j != nil && !afterCommit {
			for _, f := range j.Files {
				if !f.Existed && phase == "renaming" {
					continue
				}
				at, bk := "", ""
				if _, err := os.Stat(f.Original); err == nil {
					at = fileSHA(t, f.Original)
				}
				if _, err := os.Stat(f.Backup); err == nil {
					bk = fileSHA(t, f.Backup)
				}
				if at != modified[f.Original] && bk != modified[f.Original] {
					t.Errorf("run %d (%s): %s: the pre-restore bytes are neither at the path nor in the backup", run, phase, f.Original)
				}
			}
		}

		// The next command that opens the repository for a check
		// recovers, with one line on stderr.
		r := vmv(t, nil, "check", "--repo", repo)
		if r.code != 0 {
			t.Fatalf("run %d: check: exit %d\n%s%s", run, r.code, r.stdout, r.stderr)
		}
		recLines := strings.Count(r.stderr, "recovered an interrupted restore")
		if want := map[bool]int{true: 1, false: 0}[j != nil]; recLines != want {
			t.Errorf("run %d (%s): %d recovery lines on stderr, want %d:\n%s", run, phase, recLines, want, r.stderr)
		}
		got := hashes()
		switch {
		case same(got, modified):
			if afterCommit {
				t.Errorf("run %d (%s): originals unchanged after a kill past the commit point", run, phase)
			}
		case same(got, restored):
			if !afterCommit {
				t.Errorf("run %d (%s): restored although killed before the commit point", run, phase)
			}
		default:
			t.Errorf("run %d (%s): a mix of original and restored files after recovery:\n got %v\n pre-restore %v\n restored %v", run, phase, got, modified, restored)
		}
		if s := strays(); len(s) > 0 {
			t.Errorf("run %d (%s): left after recovery: %v", run, phase, s)
		}
		reset()
	}

	if kills < 10 {
		t.Errorf("only %d of %d runs killed", kills, runs)
	}
	// A last kill, this time in the slow rename phase if the timing
	// allows, then the next restore itself recovers and completes.
	phase, j := killRun(runs, slowEnv, slow/2)
	t.Logf("final run: killed in %s", phase)
	phases[phase]++
	r := vmv(t, nil, restoreArgs...)
	if r.code != 0 {
		t.Fatalf("restore after the kills: exit %d\n%s", r.code, r.stderr)
	}
	if j != nil && !strings.Contains(r.stderr, "recovered an interrupted restore") {
		t.Errorf("restore after a kill in %s: no recovery line on stderr: %q", phase, r.stderr)
	}
	if !same(hashes(), restored) {
		t.Error("the completing restore did not restore every file")
	}
	if s := strays(); len(s) > 0 {
		t.Errorf("left after the completing restore: %v", s)
	}
	mustVMV(t, nil, "check", "--repo", repo)
	var ks []string
	for k, v := range phases {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(ks)
	t.Logf("phases hit by %d runs (%d + 1 killed): %s", runs+1, kills, strings.Join(ks, " "))
}
