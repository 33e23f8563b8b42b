package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

// TestForwardFrames: frames round-trip; hostile lengths and truncation are
// errors, and a huge length prefix allocates nothing.
func TestForwardFrames(t *testing.T) {
	var buf bytes.Buffer
	for _, p := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{7}, streamChunk)} {
		if err := writeFrame(&buf, frameStdout, p); err != nil {
			t.Fatal(err)
		}
		typ, got, err := readFrame(&buf, maxFrame)
		if err != nil || typ != frameStdout || !bytes.Equal(got, p) {
			t.Fatalf("round trip of %d bytes: %q %d bytes %v", len(p), typ, len(got), err)
		}
	}
	if err := writeFrame(&buf, frameStdout, make([]byte, maxFrame+1)); err == nil {
		t.Errorf("writeFrame accepted an oversized frame")
	}
	if _, _, err := readFrame(bytes.NewReader(nil), maxFrame); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}

	huge := []byte{frameRequest, 0xff, 0xff, 0xff, 0xff}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, _, err := readFrame(bytes.NewReader(huge), maxFrame); err == nil || !strings.Contains(err.Error(), "exceeds") {
			t.Fatalf("huge length prefix: %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Errorf("100 huge length prefixes allocated %d bytes", d)
	}
	// Just over the limit, and a limit of 0 (the server's cancel read).
	over := binary.BigEndian.AppendUint32([]byte{frameStdout}, maxFrame+1)
	if _, _, err := readFrame(bytes.NewReader(over), maxFrame); err == nil {
		t.Errorf("limit+1 accepted")
	}
	if _, _, err := readFrame(bytes.NewReader([]byte{frameCancel, 0, 0, 0, 1, 'x'}), 0); err == nil {
		t.Errorf("a payload accepted with limit 0")
	}
	// Truncated header and payload.
	if _, _, err := readFrame(bytes.NewReader([]byte{frameStdout, 0, 0}), maxFrame); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short header: %v", err)
	}
	if _, _, err := readFrame(bytes.NewReader([]byte{frameStdout, 0, 0, 0, 9, 'a', 'b'}), maxFrame); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short payload: %v", err)
	}
}

// TestForwardAbsArgs: host paths become absolute against the client's
// directory; tree paths, hook commands and "original" do not.
func TestForwardAbsArgs(t *testing.T) {
	cwd := filepath.FromSlash("/home/admin")
	a := func(p string) string { return filepath.Join(cwd, p) }
	for _, c := range []struct{ in, want []string }{
		{[]string{"backup", "--repo", "r", "--vm", "x", "a.vhdx", "/abs/b.raw"},
			[]string{"backup", "--repo", a("r"), "--vm", "x", a("a.vhdx"), "/abs/b.raw"}},
		{[]string{"backup", "-q", "--repo=r", "--vm", "x", "--full", "--", "-odd.raw"},
			[]string{"backup", "-q", "--repo=" + a("r"), "--vm", "x", "--full", "--", a("-odd.raw")}},
		{[]string{"backup", "--vm", "x", "--pre-hook", "./freeze.sh", "vms/web01"},
			[]string{"backup", "--vm", "x", "--pre-hook", "./freeze.sh", a("vms/web01")}},
		{[]string{"--repo", "r", "backup", "--vm", "x", "d.raw"}, // flag before the command
			[]string{"--repo", a("r"), "backup", "--vm", "x", a("d.raw")}},
		{[]string{"restore", "--repo", "r", "--vm", "x", "--to", "out"},
			[]string{"restore", "--repo", a("r"), "--vm", "x", "--to", a("out")}},
		{[]string{"restore", "--vm", "x", "--to", "original", "-q"},
			[]string{"restore", "--vm", "x", "--to", "original", "-q"}},
		{[]string{"restore", "--vm", "x", "--to=original"},
			[]string{"restore", "--vm", "x", "--to=original"}},
		{[]string{"files", "--repo", "r", "cp", "web01/latest/volumes", "dest"},
			[]string{"files", "--repo", a("r"), "cp", "web01/latest/volumes", a("dest")}},
		{[]string{"files", "cp", "-q", "--repo", "r", "web01/x", "dest"},
			[]string{"files", "cp", "-q", "--repo", a("r"), "web01/x", a("dest")}},
		{[]string{"files", "ls", "--repo", "r", "web01/latest"},
			[]string{"files", "ls", "--repo", a("r"), "web01/latest"}},
		{[]string{"rp", "show", "--repo", "r", "--vm", "web01", "--password-file", "pw"},
			[]string{"rp", "show", "--repo", a("r"), "--vm", "web01", "--password-file", a("pw")}},
		{[]string{"bogus", "x"}, []string{"bogus", "x"}},
		{[]string{"backup", "--vm", "x", ""}, []string{"backup", "--vm", "x", ""}}, // not the cwd
	} {
		got := absArgs(newRootCmd(), c.in, cwd)
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("absArgs(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}

// TestForwardPolicy: what the mount runs, serializes and refuses.
func TestForwardPolicy(t *testing.T) {
	errStop := errors.New("stop")
	for _, c := range []struct {
		args   string
		serial bool
		deny   string
	}{
		{"backup --vm x d.raw", true, ""},
		{"restore --vm x --to /tmp/out", false, ""},
		{"restore --vm x --to original", true, ""},
		{"check", true, ""},
		{"check --read-data", true, ""},
		{"check --repair", false, "check --repair"},
		{"forget --vm x --keep-last 1", true, ""},
		{"prune", false, "prune"},
		{"prune --dry-run", false, "prune"},
		{"mount /mnt", false, "mount"},
		{"rp list", false, ""},
		{"rp show --vm x", false, ""},
		{"jobs", false, ""},
		{"files ls", false, ""},
		{"files cp a b", false, ""},
		{"backup --vm x --cpuprofile /tmp/p d.raw", false, "backup --cpuprofile"},
		{"group list", false, "group list"},
	} {
		root := newRootCmd()
		var serial bool
		deny := "(not reached)"
		root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
			serial, deny = forwardPolicy(cmd)
			return errStop
		}
		root.SetArgs(append(strings.Fields(c.args), "--repo", "/r"))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		if err := root.Execute(); !errors.Is(err, errStop) {
			t.Errorf("%s: %v", c.args, err)
			continue
		}
		if serial != c.serial || deny != c.deny {
			t.Errorf("%s: serial %v deny %q, want %v %q", c.args, serial, deny, c.serial, c.deny)
		}
	}
}

// syncBuf is a bytes.Buffer for several goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// servedRepo is a repository held open by this test process with a
// repository server on it, as vmvault mount has (without FUSE).
type servedRepo struct {
	dir  string
	repo *engine.Repo
	srv  *repoServer
	log  *syncBuf
}

const testMountpoint = "/mnt/vmvault-test"

func newServedRepo(t *testing.T) *servedRepo {
	t.Helper()
	if !forwardSupported {
		t.Skip("no forwarding on " + runtime.GOOS)
	}
	dir := filepath.Join(t.TempDir(), "repo")
	if err := engine.Init(dir, engine.InitOptions{DataShards: 2, ParityShards: 1}); err != nil {
		t.Fatal(err)
	}
	repo, err := engine.Open(dir, engine.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sr := &servedRepo{dir: dir, repo: repo, log: &syncBuf{}}
	sr.srv, err = startRepoServer(repo, dir, testMountpoint, func(f string, a ...any) { fmt.Fprintf(sr.log, f+"\n", a...) })
	if err != nil {
		repo.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sr.srv.Close()
		repo.Close()
		if t.Failed() {
			t.Logf("server log:\n%s", sr.log)
		}
	})
	return sr
}

// fwdRun is one forwarded command line.
type fwdRun struct {
	code           int
	ok             bool
	stdout, stderr *syncBuf
}

// forward runs args through the server of dir; sig, if not nil, is the
// client's signal channel.
func forward(dir string, sig chan os.Signal, args ...string) fwdRun {
	r := fwdRun{stdout: &syncBuf{}, stderr: &syncBuf{}}
	r.code, r.ok = forwardToMount(dir, args, forwardIO{stdout: r.stdout, stderr: r.stderr, signals: sig})
	return r
}

func writeRandom(t *testing.T, path string, size int, seed byte) string {
	t.Helper()
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestForwardInProcess drives the repository server of a held repository
// with the real client code: forwarded backup with relative paths, output
// streams, refusals, writers one at a time, cancel by signal and by a
// closed connection, hostile frames, and the socket's life cycle.
func TestForwardInProcess(t *testing.T) {
	sr := newServedRepo(t)
	src := t.TempDir()
	writeRandom(t, filepath.Join(src, "small.raw"), 2<<20, 1)
	writeRandom(t, filepath.Join(src, "slow.raw"), 4<<20, 2)
	t.Chdir(src) // the client's cwd; relative paths must resolve here
	relRepo, err := filepath.Rel(src, sr.dir)
	if err != nil {
		t.Fatal(err)
	}
	notice := fmt.Sprintf("vmvault: repository is mounted by pid %d at %s; running through it\n", os.Getpid(), testMountpoint)

	fi, err := os.Lstat(filepath.Join(sr.dir, forwardSockName))
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}

	t.Run("Backup", func(t *testing.T) {
		r := forward(sr.dir, nil, "backup", "--repo", relRepo, "--vm", "vm1", "small.raw")
		if !r.ok || r.code != 0 {
			t.Fatalf("ok %v exit %d\n%s%s", r.ok, r.code, r.stdout, r.stderr)
		}
		if !strings.HasPrefix(r.stderr.String(), notice) || !strings.Contains(r.stderr.String(), "backup vm1: ") {
			t.Errorf("stderr (notice, progress): %q", r.stderr)
		}
		if !strings.Contains(r.stdout.String(), "recovery point ") {
			t.Errorf("stdout: %q", r.stdout)
		}
		// The held repository sees it, and the data reads back.
		p, err := sr.repo.ResolveRP("vm1", "latest")
		if err != nil {
			t.Fatal(err)
		}
		m, err := sr.repo.LoadManifest(context.Background(), p.VMGUID, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		d, err := sr.repo.OpenDisk(m, "small")
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		got := make([]byte, 2<<20)
		if _, err := d.ReadAt(got, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if want, _ := os.ReadFile("small.raw"); !bytes.Equal(got, want) {
			t.Errorf("backed-up data differs")
		}
	})

	t.Run("ReadCommands", func(t *testing.T) {
		r := forward(sr.dir, nil, "rp", "show", "--repo", relRepo, "--vm", "vm1", "--json")
		var v map[string]any
		if r.code != 0 || json.Unmarshal([]byte(r.stdout.String()), &v) != nil || v["vm"] != "vm1" {
			t.Errorf("rp show: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := forward(sr.dir, nil, "files", "--repo", relRepo, "ls", "vm1/latest/disks"); r.code != 0 || !strings.Contains(r.stdout.String(), "small.raw") {
			t.Errorf("files ls: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := forward(sr.dir, nil, "files", "--repo", relRepo, "cp", "-q", "vm1/latest/disks/small.raw", "copy.raw"); r.code != 0 {
			t.Errorf("files cp: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		} else if a, b := fileSHA(t, "copy.raw"), fileSHA(t, "small.raw"); a != b {
			t.Errorf("files cp to a relative DEST: copy differs")
		}
		if r := forward(sr.dir, nil, "check", "--repo", relRepo); r.code != 0 || !strings.Contains(r.stdout.String(), "recovery points: 1 checked") {
			t.Errorf("check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if r := forward(sr.dir, nil, "rp", "show", "--repo", relRepo, "--vm", "nosuch"); r.code != 1 || !strings.Contains(r.stderr.String(), "vmvault: ") {
			t.Errorf("failing command: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("Refused", func(t *testing.T) {
		for args, want := range map[string]string{
			"prune":          "unmount it before prune",
			"check --repair": "unmount it before check --repair",
			"mount /mnt":     "repository is already mounted by pid",
		} {
			r := forward(sr.dir, nil, append(strings.Fields(args), "--repo", sr.dir)...)
			line := fmt.Sprintf("vmvault: repository is mounted by pid %d at %s; %s\n", os.Getpid(), testMountpoint, want)
			if args == "mount /mnt" {
				line = fmt.Sprintf("vmvault: repository is already mounted by pid %d at %s\n", os.Getpid(), testMountpoint)
			}
			if r.code != 1 || r.stderr.String() != line || r.stdout.String() != "" {
				t.Errorf("%s: exit %d, stderr %q, want exactly %q", args, r.code, r.stderr, line)
			}
		}
	})

	// A throttled backup holds the writer slot for half a minute: a
	// second backup waits for it, and Ctrl-C at the first client stops it.
	t.Run("SerialAndCancel", func(t *testing.T) {
		sig := make(chan os.Signal, 2)
		slow := make(chan fwdRun, 1)
		slowErr := &syncBuf{}
		go func() {
			r := fwdRun{stdout: &syncBuf{}, stderr: slowErr}
			r.code, r.ok = forwardToMount(sr.dir, []string{"backup", "--repo", sr.dir, "--vm", "slow", "--limit", "128KiB/s", "slow.raw"},
				forwardIO{stdout: r.stdout, stderr: r.stderr, signals: sig})
			slow <- r
		}()
		waitFor(t, "the slow backup to start", 10*time.Second, func() bool { return strings.Contains(slowErr.String(), "running through it") })
		time.Sleep(300 * time.Millisecond) // into its reads
		second := make(chan fwdRun, 1)
		go func() { second <- forward(sr.dir, nil, "backup", "--repo", sr.dir, "--vm", "vm2", "small.raw") }()
		time.Sleep(1 * time.Second)
		select {
		case r := <-second:
			t.Fatalf("second backup ran beside the first: exit %d\n%s", r.code, r.stderr)
		default:
		}
		sig <- os.Interrupt
		var r fwdRun
		select {
		case r = <-slow:
		case <-time.After(15 * time.Second):
			t.Fatal("Ctrl-C did not stop the forwarded backup")
		}
		if r.code != 1 || !strings.Contains(r.stderr.String(), "context canceled") {
			t.Errorf("cancelled backup: exit %d\n%s", r.code, r.stderr)
		}
		select {
		case r2 := <-second:
			if r2.code != 0 || !strings.Contains(r2.stderr.String(), "vmvault: waiting for the backup running through the mount to finish") {
				t.Errorf("second backup: exit %d\n%s", r2.code, r2.stderr)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("second backup did not finish")
		}
		if _, err := sr.repo.ResolveRP("slow", "latest"); err == nil {
			t.Errorf("the cancelled backup left a recovery point")
		}
	})

	// A client that goes away (killed) cancels its command too.
	t.Run("ClosedConnection", func(t *testing.T) {
		c, err := dialSock(filepath.Join(sr.dir, forwardSockName), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if typ, _, err := readFrame(c, maxFrame); err != nil || typ != frameHello {
			t.Fatalf("hello: %q %v", typ, err)
		}
		fs := &frameSender{w: c}
		if err := fs.sendJSON(frameRequest, fwdRequest{Version: forwardVersion, Cwd: src,
			Args: []string{"backup", "--repo", sr.dir, "--vm", "gone", "--limit", "128KiB/s", "slow.raw"}}); err != nil {
			t.Fatal(err)
		}
		if typ, _, err := readFrame(c, maxFrame); err != nil || typ != frameStart {
			t.Fatalf("start: %q %v", typ, err)
		}
		time.Sleep(500 * time.Millisecond)
		c.Close()
		// Without the cancel it would read for half a minute more.
		waitFor(t, "the abandoned backup to stop", 15*time.Second, func() bool {
			jobs, _ := engine.ListJobs(sr.dir)
			for _, j := range jobs {
				if j.Kind == "backup" && j.VM == "gone" && j.Result != engine.JobRunning {
					return true
				}
			}
			return false
		})
	})

	t.Run("Hostile", func(t *testing.T) {
		for _, junk := range [][]byte{
			{frameRequest, 0xff, 0xff, 0xff, 0xff}, // 4 GiB request
			{frameExit, 0, 0, 0, 0},                // not a request
			{frameRequest, 0, 0, 0, 2, '{', '!'},   // not JSON
		} {
			c, err := dialSock(filepath.Join(sr.dir, forwardSockName), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			readFrame(c, maxFrame) // hello
			c.Write(junk)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if typ, _, err := readFrame(c, maxFrame); err != io.EOF {
				t.Errorf("after %q: frame %q, %v; want the connection closed", junk, typ, err)
			}
			c.Close()
		}
		if r := forward(sr.dir, nil, "jobs", "--repo", sr.dir); r.code != 0 {
			t.Errorf("server unusable after hostile input: exit %d\n%s", r.code, r.stderr)
		}
	})

	t.Run("SocketLifeCycle", func(t *testing.T) {
		sock := filepath.Join(sr.dir, forwardSockName)
		if _, err := startRepoServer(sr.repo, sr.dir, "/elsewhere", func(string, ...any) {}); err == nil || !strings.Contains(err.Error(), "answers") {
			t.Errorf("second server on a live socket: %v", err)
		}
		sr.srv.Close()
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket after Close: %v", err)
		}
		if r := forward(sr.dir, nil, "jobs", "--repo", sr.dir); r.ok {
			t.Errorf("forwarded with no server")
		}
		// A stale socket (a killed mount's) is replaced.
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
		if r := forward(sr.dir, nil, "jobs", "--repo", sr.dir); r.ok {
			t.Errorf("forwarded to a stale socket")
		}
		srv, err := startRepoServer(sr.repo, sr.dir, testMountpoint, func(string, ...any) {})
		if err != nil {
			t.Fatalf("over a stale socket: %v", err)
		}
		sr.srv = srv // closed by the cleanup
		if r := forward(sr.dir, nil, "jobs", "--repo", sr.dir); !r.ok || r.code != 0 {
			t.Errorf("after replacing the stale socket: ok %v exit %d %s", r.ok, r.code, r.stderr)
		}
		// A file that is not a socket is left alone.
		srv.Close()
		os.WriteFile(sock, []byte("mine"), 0o600)
		if _, err := startRepoServer(sr.repo, sr.dir, testMountpoint, func(string, ...any) {}); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("over a regular file: %v", err)
		}
		os.Remove(sock)
	})
}
