package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
)

// TestCLIKillDuringRestoreDirForce SIGKILLs `restore --to DIR --force`
// over the files an earlier restore left in DIR (changed since) at random
// moments, half the runs with slowed commit steps so kills land in the
// rename phase too. After the recovery the next `check` runs, DIR holds
// either exactly the changed files (killed before the commit point) or
// exactly the restored ones, never a mix, and no temporary, backup or
// journal is left.
func TestCLIKillDuringRestoreDirForce(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	vm := filepath.Join(dir, "vm")
	const guid = "6E3D9F5B-8C2A-4D4E-AF3B-2A1C4D5E6F70"
	os.MkdirAll(filepath.Join(vm, "Virtual Hard Disks"), 0o755)
	os.MkdirAll(filepath.Join(vm, "Virtual Machines"), 0o755)
	copyFileT(t, filepath.Join(td, testdisks.GPTVHDX), filepath.Join(vm, "Virtual Hard Disks", "gpt.vhdx"))
	rng := rand.New(rand.NewPCG(21, 22))
	for i, ext := range []string{".vmcx", ".vmgs"} {
		b := make([]byte, 8192<<i)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		os.WriteFile(filepath.Join(vm, "Virtual Machines", guid+ext), b, 0o644)
	}
	mustVMV(t, nil, "init", "--repo", repo, "--data-shards", "2", "--parity-shards", "1")
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "kd", vm)

	out := filepath.Join(dir, "out")
	files := []string{filepath.Join(out, "Virtual Hard Disks", "gpt.vhdx"),
		filepath.Join(out, "Virtual Machines", guid+".vmcx"), filepath.Join(out, "Virtual Machines", guid+".vmgs")}
	sort.Strings(files)
	args := []string{"restore", "-q", "--repo", repo, "--vm", "kd", "--to", out, "--force"}
	start := time.Now()
	mustVMV(t, nil, args...)
	plain := time.Since(start)
	hashes := func() map[string]string {
		h := map[string]string{}
		for _, p := range files {
			if _, err := os.Stat(p); err == nil {
				h[p] = fileSHA(t, p)
			}
		}
		return h
	}
	restored := hashes()
	// The files as changed after that restore, kept to reset each run.
	pristine := map[string][]byte{}
	for _, p := range files {
		b, _ := os.ReadFile(p)
		for j := 0; j < len(b); j += 1 << 20 {
			b[j] ^= 0x5a
		}
		b[len(b)-1] ^= 0xa5
		pristine[p] = b
	}
	reset := func() {
		for p, b := range pristine {
			os.WriteFile(p, b, 0o644)
		}
	}
	reset()
	changed := hashes()
	same := func(a, b map[string]string) bool {
		for _, p := range files {
			if a[p] != b[p] {
				return false
			}
		}
		return len(a) == len(b)
	}
	slowEnv := []string{"VMVAULT_TEST_COMMIT_STEP_DELAY=40ms"}
	start = time.Now()
	mustVMV(t, slowEnv, args...)
	slow := time.Since(start)
	reset()
	journalDir := filepath.Join(repo, "catalog", "restore-journal")
	strays := func() []string {
		var s []string
		for _, d := range []string{filepath.Dir(files[0]), filepath.Dir(files[2]), journalDir} {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".") || d == journalDir {
					s = append(s, filepath.Join(d, e.Name()))
				}
			}
		}
		return s
	}

	phases := map[string]int{}
	kills := 0
	for run := 0; kills < 10 && run < 30; run++ {
		env, span := []string(nil), plain
		if run%2 == 1 {
			env, span = slowEnv, slow
		}
		delay := time.Duration(rng.Int64N(int64(span)))
		cmd := exec.Command(vmvaultBin(t), args...)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		killed := false
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d: restore failed: %v", run, err)
			}
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
			var ee *exec.ExitError
			if err := <-done; errors.As(err, &ee) {
				killed = true
				kills++
			}
		}
		r := vmv(t, nil, "check", "--repo", repo)
		if r.code != 0 {
			t.Fatalf("run %d: check: exit %d\n%s%s", run, r.code, r.stdout, r.stderr)
		}
		got := hashes()
		switch {
		case same(got, changed):
			phases["rolled back"]++
			if !killed {
				t.Errorf("run %d: a completed restore left the old files", run)
			}
		case same(got, restored):
			phases["restored"]++
		default:
			t.Errorf("run %d (killed after %v): a mix after recovery:\n got %v\n before %v\n restored %v", run, delay, got, changed, restored)
		}
		if s := strays(); len(s) > 0 {
			t.Errorf("run %d: left after recovery: %v", run, s)
		}
		reset()
	}
	if kills < 8 {
		t.Errorf("only %d runs killed", kills)
	}
	var ks []string
	for k, v := range phases {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(ks)
	t.Logf("restore %v (slowed %v); %d kills; %s", plain.Round(time.Millisecond), slow.Round(time.Millisecond), kills, strings.Join(ks, " "))
}
