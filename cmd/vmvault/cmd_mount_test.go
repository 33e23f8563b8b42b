//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs"
)

func TestParseCacheSize(t *testing.T) {
	for in, want := range map[string]int64{"256M": 256 << 20, "1G": 1 << 30, "1.5g": 3 << 29, "512MiB": 512 << 20, "8388608": 8 << 20, "2GB": 2 << 30} {
		if got, err := parseCacheSize(in); err != nil || got != want {
			t.Errorf("parseCacheSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1G", "1K", "9999999T"} {
		if _, err := parseCacheSize(in); err == nil {
			t.Errorf("parseCacheSize(%q) accepted", in)
		}
	}
}

// cliRepo makes a repository with one backup of web01 (gpt.vhdx,
// nopart.raw) through the CLI.
func cliRepo(t *testing.T) (repo string) {
	t.Helper()
	td := testdisks.Dir(t)
	repo = filepath.Join(t.TempDir(), "repo")
	mustVMV(t, nil, "init", "--repo", repo)
	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "web01", filepath.Join(td, testdisks.GPTVHDX), filepath.Join(td, testdisks.NoPartRaw))
	return repo
}

func TestMountCLIErrors(t *testing.T) {
	repo := cliRepo(t)
	wantFail(t, vmv(t, nil, "mount", "--repo", repo, filepath.Join(t.TempDir(), "missing")), "does not exist")
	wantFail(t, vmv(t, nil, "mount", "--repo", repo, "/proc"), "in use")
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	wantFail(t, vmv(t, nil, "mount", "--repo", repo, f), "not a directory")
	wantFail(t, vmv(t, nil, "mount", "--repo", repo, "--cache-size", "lots", t.TempDir()), "--cache-size")
	wantFail(t, vmv(t, nil, "mount", "--repo", repo, "--read-ahead", "far", t.TempDir()), "--read-ahead")
	wantFail(t, vmv(t, nil, "mount", "--repo", filepath.Join(t.TempDir(), "norepo"), t.TempDir()), "no repository")
}

// TestMountCLI runs `vmvault mount` in the foreground, reads through it and
// stops it with SIGTERM (idle) and SIGINT (with a file open).
func TestMountCLI(t *testing.T) {
	testenv.NeedFUSE(t)
	repo := cliRepo(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		mp := t.TempDir()
		cmd := exec.Command(vmvaultBin(t), "mount", "--repo", repo, "--cache-size", "64M", mp)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			exec.Command("fusermount3", "-u", "-z", mp).Run()
		})
		hello := filepath.Join(mp, "web01", "latest", "volumes", "gpt-p3", "hello.txt")
		deadline := time.Now().Add(20 * time.Second)
		for {
			if b, err := os.ReadFile(hello); err == nil {
				if string(b) != "hello ext4\n" && len(b) != 11 {
					t.Errorf("hello.txt: %q", b)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("mount did not come up: %s", stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		var open *os.File
		if sig == syscall.SIGINT {
			// An open file keeps the mount busy: the command detaches
			// lazily and exits when the file is closed.
			var err error
			if open, err = os.Open(filepath.Join(mp, "web01", "latest", "disks", "gpt.raw")); err != nil {
				t.Fatal(err)
			}
		}
		cmd.Process.Signal(sig)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if open != nil {
			time.Sleep(500 * time.Millisecond)
			buf := make([]byte, 4096)
			if _, err := open.ReadAt(buf, 1<<20); err != nil {
				t.Errorf("read from an open file after detaching: %v", err)
			}
			open.Close()
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%v: exit %v\n%s", sig, err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%v: vmvault mount did not exit\n%s", sig, stderr.String())
		}
		if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+mp+" ") {
			t.Errorf("%s still mounted after %v", mp, sig)
		}
		if !strings.Contains(stderr.String(), "serving") {
			t.Errorf("no start line: %s", stderr.String())
		}
	}
}

// TestFilesCLI: ls (text and JSON) and cp of the tree without FUSE.
func TestFilesCLI(t *testing.T) {
	repo := cliRepo(t)
	out := mustVMV(t, nil, "files", "--repo", repo, "ls")
	if strings.TrimSpace(out) != "web01/" {
		t.Errorf("ls: %q", out)
	}
	out = mustVMV(t, nil, "files", "--repo", repo, "ls", "web01/latest")
	if strings.TrimSpace(out) != "config/\ndisks/\nvm.json\nvolumes/" {
		t.Errorf("ls latest: %q", out)
	}
	var ents []struct{ Name, Type, Target string }
	out = mustVMV(t, nil, "files", "--repo", repo, "ls", "--json", "web01/latest/volumes/gpt-p3")
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, e := range ents {
		got[e.Name] = e.Type + ":" + e.Target
	}
	if got["hello.txt"] != "file:" || got["dir"] != "dir:" || got["link-rel"] != "symlink:hello.txt" {
		t.Errorf("ls --json: %v", got)
	}
	wantFail(t, vmv(t, nil, "files", "--repo", repo, "ls", "web01/nope"), "does not exist")

	dest := t.TempDir()
	r := vmv(t, nil, "files", "--repo", repo, "cp", "web01/latest/volumes/gpt-p3", dest)
	if r.code != 0 {
		t.Fatalf("files cp: %d %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "link-abs") { // refused: points outside the copy
		t.Errorf("files cp did not report the unsafe symlink: %s", r.stderr)
	}
	// Compare with the guest filesystem read directly.
	d, err := vhdxfs.Open(filepath.Join(testdisks.Dir(t), testdisks.GPTVHDX))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	vols, _, _ := vhdxfs.Volumes(d)
	fsys, err := vols[2].OpenFS()
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	n := 0
	for _, e := range testdisks.ManifestFor(t, testdisks.GPTVHDX, 3) {
		p := filepath.Join(dest, "gpt-p3", filepath.FromSlash(e.Path))
		fi, err := os.Lstat(p)
		if e.Kind == 'l' {
			if e.Target[0] != '/' && e.Path != "link-dangling" {
				if target, err := os.Readlink(p); err != nil || target != e.Target {
					t.Errorf("%s: -> %q %v", e.Path, target, err)
				}
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", e.Path, err)
			continue
		}
		gi, _ := fsys.Stat(e.Path)
		if !fi.ModTime().Equal(gi.ModTime) {
			t.Errorf("%s: mtime %v, want %v", e.Path, fi.ModTime(), gi.ModTime)
		}
		if e.Kind == 'f' && fileSHA(t, p) != e.SHA256 {
			t.Errorf("%s: content differs", e.Path)
		}
		n++
	}
	if n < 15 {
		t.Errorf("checked %d entries", n)
	}
}
