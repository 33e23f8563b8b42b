//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/engine"
	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
)

// vmvIn runs the binary like vmv, in directory dir.
func vmvIn(t *testing.T, dir string, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(vmvaultBin(t), args...)
	cmd.Dir = dir
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "VMVAULT_PASSWORD=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	res := cliResult{so.String(), se.String(), 0}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestMountForwardCLI: while `vmvault mount` runs, `vmvault backup` of
// the same repository in another process runs through the mount: it
// succeeds, its output arrives, and the new recovery point shows up in
// the mounted tree and reads back right. The repository is encrypted and
// the clients have no password: the mount holds the key. prune is refused
// with one line; rp list works; after SIGTERM the socket is gone and
// backup opens the repository itself again.
func TestMountForwardCLI(t *testing.T) {
	testenv.NeedFUSE(t)
	td := testdisks.Dir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	pw := []string{"VMVAULT_PASSWORD=correct horse"}
	mustVMV(t, pw, "init", "--repo", repo, "--encrypt")
	mustVMV(t, pw, "backup", "-q", "--repo", repo, "--vm", "web01", filepath.Join(td, testdisks.GPTVHDX), filepath.Join(td, testdisks.NoPartRaw))
	mp := t.TempDir()
	mount := exec.Command(vmvaultBin(t), "mount", "--repo", repo, "--cache-size", "64M", mp)
	mount.Env = append(os.Environ(), pw...)
	mountErr := &syncBuf{}
	mount.Stderr = mountErr
	if err := mount.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- mount.Wait() }()
	t.Cleanup(func() {
		mount.Process.Kill()
		exec.Command("fusermount3", "-u", "-z", mp).Run()
		if t.Failed() {
			t.Logf("vmvault mount stderr:\n%s", mountErr)
		}
	})
	sock := filepath.Join(repo, forwardSockName)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := os.Stat(filepath.Join(mp, "web01", "latest", "vm.json"))
		fi, serr := os.Lstat(sock)
		if err == nil && serr == nil {
			if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want a socket with 0600", sock, fi.Mode())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount or socket did not come up: %v, %v", err, serr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := mount.Process.Pid
	notice := fmt.Sprintf("vmvault: repository is mounted by pid %d at %s; running through it\n", pid, mp)
	oldRP := strings.TrimSpace(mustReadlink(t, filepath.Join(mp, "web01", "latest")))

	// A new recovery point of the mounted VM, another disk, the source
	// named relative to the client's directory; --json on stdout.
	time.Sleep(1100 * time.Millisecond) // recovery point IDs have one-second resolution
	r := vmvIn(t, td, nil, "backup", "--repo", repo, "--vm", "web01", "--json", testdisks.MBRVHDX)
	if r.code != 0 {
		t.Fatalf("backup while mounted: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, notice) {
		t.Errorf("backup stderr does not start with the forwarding line:\n%s", r.stderr)
	}
	var rp struct{ ID, VM string }
	if err := json.Unmarshal([]byte(r.stdout), &rp); err != nil || rp.VM != "web01" || rp.ID == "" || rp.ID == oldRP {
		t.Fatalf("backup --json output: %v\n%s", err, r.stdout)
	}
	// A new VM, plain output: the summary on stdout, progress on stderr.
	r = vmvIn(t, td, nil, "backup", "--repo", repo, "--vm", "db01", testdisks.NoPartRaw)
	if r.code != 0 || !strings.Contains(r.stdout, "recovery point ") || !strings.Contains(r.stdout, " of db01 ") {
		t.Fatalf("backup db01 while mounted: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, notice) || !strings.Contains(r.stderr, "backup db01: ") {
		t.Errorf("backup db01 stderr (forwarding line, progress):\n%s", r.stderr)
	}

	// The new points show up without a remount and read back right.
	vmDir := filepath.Join(mp, "web01")
	deadline = time.Now().Add(20 * time.Second)
	for {
		target, _ := os.Readlink(filepath.Join(vmDir, "latest"))
		if target == rp.ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new recovery point %s not shown: latest -> %q", rp.ID, target)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got, want := fileSHA(t, filepath.Join(vmDir, rp.ID, "disks", "mbr-fixed.raw")), fileSHA(t, filepath.Join(td, testdisks.MBRRaw)); got != want {
		t.Errorf("mbr-fixed.raw of the new recovery point: sha256 %s, want %s (qemu-img convert of the source)", got, want)
	}
	n := 0
	for _, part := range []int{1, 2} {
		for _, e := range testdisks.ManifestFor(t, testdisks.MBRVHDX, part) {
			if e.Kind != 'f' {
				continue
			}
			p := filepath.Join(vmDir, "latest", "volumes", fmt.Sprintf("mbr-fixed-p%d", part), filepath.FromSlash(e.Path))
			if got := fileSHA(t, p); got != e.SHA256 {
				t.Errorf("%s: sha256 %s, want %s", p, got, e.SHA256)
			}
			n++
		}
	}
	if n < 4 {
		t.Errorf("checked only %d guest files", n)
	}
	if got, want := fileSHA(t, filepath.Join(mp, "db01", "latest", "disks", "nopart.raw")), fileSHA(t, filepath.Join(td, testdisks.NoPartRaw)); got != want {
		t.Errorf("db01 nopart.raw: sha256 %s, want %s", got, want)
	}
	if _, err := os.Stat(filepath.Join(vmDir, oldRP, "disks", "gpt.vhdx")); err != nil {
		t.Errorf("the old recovery point: %v", err)
	}

	// rp list --json works while mounted (catalog only, no forwarding).
	r = vmvIn(t, td, nil, "rp", "list", "--repo", repo, "--json")
	var list []struct{ ID, VM string }
	if err := json.Unmarshal([]byte(r.stdout), &list); r.code != 0 || err != nil || len(list) != 3 {
		t.Errorf("rp list --json: exit %d, %v, %d points\n%s%s", r.code, err, len(list), r.stdout, r.stderr)
	}
	// rp show opens the store: forwarded, with --repo relative to the client.
	r = vmvIn(t, filepath.Dir(repo), nil, "rp", "show", "--repo", filepath.Base(repo), "--vm", "db01", "--json")
	var show map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &show); r.code != 0 || err != nil || show["vm"] != "db01" || !strings.HasPrefix(r.stderr, notice) {
		t.Errorf("rp show with a relative --repo: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	// Deleting data under the mount is refused with one line.
	wantFail(t, vmv(t, nil, "prune", "--repo", repo),
		fmt.Sprintf("repository is mounted by pid %d at %s; unmount it before prune", pid, mp))
	wantFail(t, vmv(t, nil, "check", "--repo", repo, "--repair"), "unmount it before check --repair")
	// A scheduled pass while mounted runs in the mount process too (the
	// client, without a password, only plans and forwards).
	mustVMV(t, nil, "group", "create", "nightly", "--repo", repo, "--retention-days", "30", "--sync-frequency", "24h")
	mustVMV(t, nil, "group", "add", "nightly", "db01", "--repo", repo)
	agePoint(t, repo, "db01", 72*time.Hour)
	before := rpIDs(t, repo, "db01")
	r = vmvIn(t, td, nil, "schedule", "run", "--repo", repo, "--once", "-q")
	if r.code != 0 || !strings.HasPrefix(r.stderr, notice) || !strings.Contains(r.stdout, "nightly/db01: recovery point ") {
		t.Errorf("schedule run --once while mounted: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := rpIDs(t, repo, "db01"); len(after) != len(before)+1 {
		t.Errorf("schedule run --once while mounted: points %v -> %v", before, after)
	}
	if !strings.Contains(mountErr.String(), "ran vmvault schedule run for pid ") {
		t.Errorf("the mount did not log the forwarded schedule pass:\n%s", mountErr)
	}
	if !strings.Contains(mountErr.String(), "ran vmvault backup for pid ") {
		t.Errorf("the mount did not log the forwarded backup:\n%s", mountErr)
	}

	// SIGTERM: unmounted, the socket removed, and backup is plain again.
	mount.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("mount exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("vmvault mount did not exit on SIGTERM")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after the mount exited: %v", err)
	}
	r = vmvIn(t, td, pw, "backup", "-q", "--repo", repo, "--vm", "db01", testdisks.NoPartRaw)
	if r.code != 0 || strings.Contains(r.stderr, "running through it") {
		t.Errorf("backup after unmount: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func mustReadlink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestForwardPeerUID: a process of another user that can reach the socket
// (its mode loosened on purpose) is still refused: the mount checks the
// peer's uid (SO_PEERCRED), not just the file mode.
func TestForwardPeerUID(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root to run a client as another user")
	}
	sr := newServedRepo(t)
	bin := vmvaultBin(t)
	// Let uid 65534 reach the socket and the binary.
	for _, d := range []string{filepath.Dir(filepath.Dir(sr.dir)), filepath.Dir(sr.dir), sr.dir, filepath.Dir(bin)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(sr.dir, forwardSockName), 0o666); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(filepath.Dir(bin), 0o700)
	cmd := exec.Command(bin, "rp", "show", "--repo", sr.dir, "--vm", "web01")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var se bytes.Buffer
	cmd.Stderr = &se
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || se.String() != "vmvault: repository is mounted and the mount process serves only its own user and root\n" {
		t.Errorf("client as uid 65534: %v, stderr %q", err, se.String())
	}
	if !strings.Contains(sr.log.String(), "refused a command from another user") {
		t.Errorf("server log: %s", sr.log)
	}
}

// TestForwardLongPath: a repository path too long for a sockaddr_un
// (108 bytes) is still served and reached, through /proc/self/fd.
func TestForwardLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60), "repo")
	if len(filepath.Join(dir, forwardSockName)) < 120 {
		t.Fatalf("path not long enough: %s", dir)
	}
	if err := engine.Init(dir, engine.InitOptions{DataShards: 1, ParityShards: -1}); err != nil {
		t.Fatal(err)
	}
	repo, err := engine.Open(dir, engine.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	srv, err := startRepoServer(repo, dir, testMountpoint, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if r := forward(dir, nil, "check", "--repo", dir); !r.ok || r.code != 0 {
		t.Errorf("check through a long socket path: ok %v exit %d\n%s%s", r.ok, r.code, r.stdout, r.stderr)
	}
}
