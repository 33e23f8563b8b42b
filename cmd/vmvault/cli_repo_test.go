package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
)

// The CLI tests run the real binary, built once per test process.
var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// TestMain removes the binary built for the CLI tests (built lazily, on
// the first test that needs it, so `go test -run Unit` does not pay for it).
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// vmvaultBin returns the path of the vmvault binary built from this
// package (once per test process).
func vmvaultBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmvault-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "vmvault")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type cliResult struct {
	stdout, stderr string
	code           int
}

// vmv runs the binary with env added to a clean environment (no
// VMVAULT_PASSWORD leaking in from the developer's shell).
func vmv(t testing.TB, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(vmvaultBin(t), args...)
	var base []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "VMVAULT_PASSWORD=") {
			base = append(base, e)
		}
	}
	cmd.Env = append(base, env...)
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

func mustVMV(t testing.TB, env []string, args ...string) string {
	t.Helper()
	r := vmv(t, env, args...)
	if r.code != 0 {
		t.Fatalf("vmvault %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// wantFail checks the error contract: exit 1 and exactly one line on
// stderr, "vmvault: ..." containing want.
func wantFail(t testing.TB, r cliResult, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if r.code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "vmvault: ") || !strings.Contains(lines[0], want) {
		t.Errorf("exit %d, stderr %q: want exit 1 and one line mentioning %q", r.code, r.stderr, want)
	}
}

func fileSHA(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func toolOut(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// TestCLIWorkflow: init (encrypted), backup, rp list/show --json,
// restore (VHDX checked by qemu-img), check, jobs.
func TestCLIWorkflow(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	env := []string{"VMVAULT_PASSWORD=correct horse"}
	mustVMV(t, env, "init", "--repo", repo, "--data-shards", "3", "--parity-shards", "1", "--pool", filepath.Join(dir, "p1")+","+filepath.Join(dir, "p2"), "--encrypt")
	mustVMV(t, nil, "group", "create", "prod", "--repo", repo, "--retention-days", "30")
	mustVMV(t, env, "backup", "--repo", repo, "--vm", "web01", "--group", "prod", "--pre-hook", "true",
		filepath.Join(td, testdisks.GPTVHDX), filepath.Join(td, testdisks.NoPartRaw))

	var list []map[string]any
	if err := json.Unmarshal([]byte(mustVMV(t, nil, "rp", "list", "--repo", repo, "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("rp list: %v", list)
	}
	rp := list[0]
	for _, k := range []string{"id", "vm", "vm_guid", "time", "consistency", "group", "disks", "bytes_new", "bytes_stored"} {
		if _, ok := rp[k]; !ok {
			t.Errorf("rp list --json: no %q field", k)
		}
	}
	if rp["vm"] != "web01" || rp["group"] != "prod" || rp["consistency"] != "application-consistent" {
		t.Errorf("rp list: %v", rp)
	}
	disks, _ := rp["disks"].([]any)
	if len(disks) != 2 || disks[0].(map[string]any)["name"] != "gpt" || disks[0].(map[string]any)["virtual_size"].(float64) != 200<<20 {
		t.Errorf("disks: %v", disks)
	}
	id := rp["id"].(string)

	var show map[string]any
	if err := json.Unmarshal([]byte(mustVMV(t, env, "rp", "show", "--repo", repo, "--vm", "web01", "--rp", id, "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if show["id"] != id || len(show["disk_details"].([]any)) != 2 {
		t.Errorf("rp show: %v", show)
	}

	out := filepath.Join(dir, "out")
	mustVMV(t, env, "restore", "--repo", repo, "--vm", "web01", "--rp", "latest", "--to", out)
	toolOut(t, "qemu-img", "check", "-f", "vhdx", filepath.Join(out, "gpt.vhdx"))
	if o := toolOut(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", filepath.Join(out, "gpt.vhdx"), filepath.Join(td, testdisks.GPTRaw)); !strings.Contains(o, "identical") {
		t.Fatal(o)
	}
	mustVMV(t, env, "restore", "--repo", repo, "--vm", "web01", "--rp", id, "--to", out, "--format", "raw")
	if fileSHA(t, filepath.Join(out, "nopart.raw")) != fileSHA(t, filepath.Join(td, testdisks.NoPartRaw)) {
		t.Error("raw restore differs")
	}
	mustVMV(t, env, "check", "--repo", repo, "--read-data")

	// Two VMs restored in parallel, each into DIR/<vm>.
	mustVMV(t, env, "backup", "-q", "--repo", repo, "--vm", "db01", filepath.Join(td, testdisks.MBRVHDX))
	multi := filepath.Join(dir, "multi")
	mustVMV(t, env, "restore", "-q", "--repo", repo, "--vm", "web01,db01", "--parallel", "2", "--to", multi, "--format", "raw")
	if fileSHA(t, filepath.Join(multi, "db01", "mbr-fixed.raw")) != fileSHA(t, filepath.Join(td, testdisks.MBRRaw)) ||
		fileSHA(t, filepath.Join(multi, "web01", "gpt.raw")) != fileSHA(t, filepath.Join(td, testdisks.GPTRaw)) {
		t.Error("parallel restore differs")
	}
	// forget by retention, then only the kept point is listed.
	mustVMV(t, env, "backup", "-q", "--repo", repo, "--vm", "db01", filepath.Join(td, testdisks.MBRVHDX))
	mustVMV(t, nil, "forget", "--repo", repo, "--vm", "db01", "--keep-last", "1")
	var dbList []map[string]any
	json.Unmarshal([]byte(mustVMV(t, nil, "rp", "list", "--repo", repo, "--vm", "db01", "--json")), &dbList)
	if len(dbList) != 1 {
		t.Errorf("after forget --keep-last 1: %d points", len(dbList))
	}

	var jobs []map[string]any
	if err := json.Unmarshal([]byte(mustVMV(t, nil, "jobs", "--repo", repo, "--json")), &jobs); err != nil {
		t.Fatal(err)
	}
	kinds := ""
	for _, j := range jobs {
		kinds += j["kind"].(string) + ":" + j["result"].(string) + " "
	}
	if kinds != "backup:ok restore:ok restore:ok check:ok backup:ok restore:ok restore:ok backup:ok forget:ok " {
		t.Errorf("jobs: %s", kinds)
	}
}

// TestCLIErrors: bad inputs exit 1 with one line and change nothing.
func TestCLIErrors(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	enc := filepath.Join(dir, "enc")
	mustVMV(t, nil, "init", "--repo", repo)
	mustVMV(t, []string{"VMVAULT_PASSWORD=right"}, "init", "--repo", enc, "--encrypt")
	garbage := filepath.Join(dir, "garbage.vhdx")
	os.WriteFile(garbage, []byte("not a vhdx"), 0o644)
	trunc := filepath.Join(dir, "trunc.vhdx")
	b, _ := os.ReadFile(filepath.Join(td, testdisks.GPTVHDX))
	os.WriteFile(trunc, b[:2<<20], 0o644)
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("wrong\n"), 0o600)

	wantFail(t, vmv(t, nil, "backup", "-q", "--repo", repo, "--vm", "x", garbage), "not a VHDX")
	wantFail(t, vmv(t, nil, "backup", "-q", "--repo", repo, "--vm", "x", trunc), "trunc.vhdx")
	wantFail(t, vmv(t, nil, "backup", "-q", "--repo", repo, "--vm", "x", filepath.Join(td, testdisks.OrphanAVHDX)), "parent not found")
	wantFail(t, vmv(t, nil, "rp", "list", "--repo", repo, "--vm", "nosuchvm"), "unknown VM")
	wantFail(t, vmv(t, nil, "rp", "list", "--repo", filepath.Join(dir, "norepo")), "no repository")
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "x", filepath.Join(td, testdisks.NoPartRaw))
	wantFail(t, vmv(t, nil, "restore", "-q", "--repo", repo, "--vm", "x", "--rp", "2001-01-01T000000Z", "--to", filepath.Join(dir, "o")), "unknown recovery point")
	wantFail(t, vmv(t, nil, "restore", "-q", "--repo", repo, "--vm", "x", "--rp", "yesterday", "--to", filepath.Join(dir, "o")), "unknown recovery point")
	wantFail(t, vmv(t, []string{"VMVAULT_PASSWORD=wrong"}, "backup", "-q", "--repo", enc, "--vm", "x", filepath.Join(td, testdisks.NoPartRaw)), "wrong password")
	wantFail(t, vmv(t, nil, "check", "--repo", enc, "--password-file", pwFile), "wrong password")
	wantFail(t, vmv(t, nil, "check", "--repo", enc), "password required")
	wantFail(t, vmv(t, nil, "init", "--repo", repo), "already exists")
	wantFail(t, vmv(t, nil, "init", "--repo", filepath.Join(dir, "e2"), "--encrypt"), "password")
	if _, err := os.Stat(filepath.Join(dir, "o")); err == nil {
		t.Error("failed restore created its target")
	}
	var list []map[string]any
	json.Unmarshal([]byte(mustVMV(t, nil, "rp", "list", "--repo", repo, "--json")), &list)
	if len(list) != 1 {
		t.Errorf("%d recovery points after failed backups, want 1", len(list))
	}
}

// TestCLIRestoreFullDisk restores into a small tmpfs: the restore fails
// with one line and leaves no file (complete or temporary) behind.
func TestCLIRestoreFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root to mount a small tmpfs")
	}
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	mustVMV(t, nil, "init", "--repo", repo)
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "g", filepath.Join(td, testdisks.GPTVHDX))
	mnt := filepath.Join(dir, "small")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("cannot mount tmpfs: %v %s", err, out))
	}
	defer exec.Command("umount", mnt).Run()
	wantFail(t, vmv(t, nil, "restore", "-q", "--repo", repo, "--vm", "g", "--to", mnt), "no space left")
	ents, _ := os.ReadDir(mnt)
	for _, e := range ents {
		t.Errorf("left behind after a failed restore: %s", e.Name())
	}
}

// TestCLIRestoreOriginal: --to original refuses while the file is locked
// by another process, and otherwise replaces it with the backed-up bytes.
func TestCLIRestoreOriginal(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	img := filepath.Join(dir, "disk.raw")
	orig, _ := os.ReadFile(filepath.Join(td, testdisks.NoPartRaw))
	os.WriteFile(img, orig, 0o644)
	want := fileSHA(t, img)
	mustVMV(t, nil, "init", "--repo", repo)
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "o", img)
	f, _ := os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt(bytes.Repeat([]byte{0xee}, 1<<20), 1<<20)
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	wantFail(t, vmv(t, nil, "restore", "-q", "--repo", repo, "--vm", "o", "--to", "original"), "in use")
	if fileSHA(t, img) == want {
		t.Fatal("refused restore changed the file")
	}
	f.Close() // releases the lock
	mustVMV(t, nil, "restore", "-q", "--repo", repo, "--vm", "o", "--to", "original")
	if fileSHA(t, img) != want {
		t.Error("restore to original did not bring back the backed-up bytes")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "vmvault-restore") {
			t.Errorf("temporary left: %s", e.Name())
		}
	}
}

// TestCLIKillDuringBackup SIGKILLs backups at random moments: no partial
// recovery point is ever listed, check stays clean, and the next backup
// succeeds, restores exactly and reuses what the killed ones stored.
func TestCLIKillDuringBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	img := filepath.Join(dir, "big.raw")
	// 160 MiB: random (incompressible) data with zero holes, so a backup
	// takes long enough (~0.5-1 s here) to be killed in its middle.
	rng := rand.New(rand.NewPCG(7, 8))
	f, _ := os.Create(img)
	buf := make([]byte, 1<<20)
	for i := int64(0); i < 160; i++ {
		if i%5 == 4 {
			continue
		}
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		f.WriteAt(buf, i<<20)
	}
	f.Truncate(160 << 20)
	f.Close()
	want := fileSHA(t, img)
	mustVMV(t, nil, "init", "--repo", repo, "--data-shards", "2", "--parity-shards", "1")

	completed := 0
	for run := 0; run < 12; run++ {
		cmd := exec.Command(vmvaultBin(t), "backup", "-q", "--repo", repo, "--vm", "k", "--full", img)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		delay := time.Duration(rng.IntN(1200)) * time.Millisecond
		if run == 11 {
			delay = time.Hour // the last run completes
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d: backup failed: %v", run, err)
			}
			completed++
		case <-time.After(delay):
			cmd.Process.Signal(syscall.SIGKILL)
			if err := <-done; err == nil {
				completed++
			} else {
				t.Logf("run %d killed after %v", run, delay)
			}
		}
		var list []map[string]any
		if err := json.Unmarshal([]byte(mustVMV(t, nil, "rp", "list", "--repo", repo, "--json")), &list); err != nil {
			t.Fatal(err)
		}
		if len(list) == completed+1 && delay != time.Hour {
			// Killed after the commit (while recording the job or
			// closing): the recovery point is complete, which is allowed;
			// a partial one is what must never be listed.
			t.Logf("run %d: killed after its recovery point was committed", run)
			completed++
		}
		if len(list) != completed {
			t.Fatalf("run %d (killed after %v): %d recovery points listed, %d backups completed", run, delay, len(list), completed)
		}
		mustVMV(t, nil, "check", "--repo", repo)
	}
	t.Logf("%d of 12 backups completed (the last is never killed)", completed)
	var list []map[string]any
	json.Unmarshal([]byte(mustVMV(t, nil, "rp", "list", "--repo", repo, "--json")), &list)
	t.Logf("first completed backup stored %v new bytes of %v read (less when killed runs left durable packs)",
		list[0]["bytes_new"], list[0]["bytes_read"])
	var bp map[string]any
	json.Unmarshal([]byte(mustVMV(t, nil, "backup", "--json", "--repo", repo, "--vm", "k", img)), &bp)
	if bp["bytes_read"].(float64) != 0 || bp["bytes_new"].(float64) != 0 {
		t.Errorf("backup after the kills: read %v new %v, want the unchanged disk reused", bp["bytes_read"], bp["bytes_new"])
	}
	out := filepath.Join(dir, "out")
	mustVMV(t, nil, "restore", "-q", "--repo", repo, "--vm", "k", "--to", out, "--format", "raw")
	if fileSHA(t, filepath.Join(out, "big.raw")) != want {
		t.Error("restore after kills differs from the image")
	}
	mustVMV(t, nil, "check", "--repo", repo, "--read-data")
}

// TestCLILimitNotify: --limit holds a restore to its rate (a lower bound on
// the time, which a loaded machine cannot break) and --notify posts the
// outcome to a webhook.
func TestCLILimitNotify(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	mustVMV(t, nil, "init", "--repo", repo)
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "n", filepath.Join(td, testdisks.MBRVHDX)) // ~3.3 MiB of data
	events := make(chan map[string]any, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		json.NewDecoder(r.Body).Decode(&ev)
		events <- ev
	}))
	defer srv.Close()
	start := time.Now()
	mustVMV(t, nil, "restore", "-q", "--repo", repo, "--vm", "n", "--to", filepath.Join(dir, "out"), "--format", "raw",
		"--limit", "1MiB/s", "--notify", srv.URL+"/hook")
	el := time.Since(start)
	select {
	case ev := <-events:
		if ev["event"] != "restore" || ev["status"] != "ok" || ev["vm"] != "n" || ev["bytes"].(float64) < 3<<20 {
			t.Errorf("webhook event %v", ev)
		}
		// The limiter may hand out one burst (at most 256 KiB) up front;
		// everything after it is paced at the set rate.
		bytes, _ := ev["bytes"].(float64)
		if min := time.Duration((bytes - 256<<10) / (1 << 20) * float64(time.Second)); el < min {
			t.Errorf("%.0f bytes restored at 1 MiB/s took %v, want at least %v", bytes, el, min)
		}
	default:
		t.Error("no webhook notification")
	}
	wantFail(t, vmv(t, nil, "restore", "-q", "--repo", repo, "--vm", "n", "--to", filepath.Join(dir, "o2"), "--notify", "bogus://x"), "notification target")
	wantFail(t, vmv(t, nil, "backup", "-q", "--repo", repo, "--vm", "n", "--limit", "fast", filepath.Join(td, testdisks.MBRVHDX)), "fast")
}
