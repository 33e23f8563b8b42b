//go:build linux

// Package fusetest is the conformance suite every FUSE adapter of the
// recovery tree must pass (restic's backend/test pattern): the same tests,
// on real FUSE mounts of real disk images, for go-fuse and cgofuse. It also
// holds the fixtures (a DirSource repository over internal/testdisks) that
// the tree's own tests use.
package fusetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmvault/vmvault/engine"
	"github.com/vmvault/vmvault/internal/copyout"
	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Mounted is a running mount as the suite needs it.
type Mounted interface {
	// Unmount unmounts (lazily when busy); Wait returns when the server
	// has stopped.
	Unmount() error
	Wait()
}

// MountFunc mounts tree at dir (an existing empty directory) and returns
// once the mount serves requests.
type MountFunc func(t testing.TB, tree *mount.Tree, dir string) (Mounted, error)

// Fixture names.
const (
	VM1      = "web01"
	VM1RP1   = "2026-11-20T100000Z"
	VM1RP2   = "2026-11-21T100000Z" // added while mounted
	VM2      = "chain01"
	VM2RP1   = "2026-11-19T080000Z"
	ConfigVM = "Virtual Machines/4A1B2C3D-0000-4000-8000-000000000001.vmcx"
)

// Disk is one disk of the fixture repository with its oracle.
type Disk struct {
	VM, RP, Name string // Name = <disk>
	Source       string // the disk file
	Raw          string // its guest-visible bytes (qemu-img convert -O raw, or the expected chain bytes)
	Image        string // testdisks image name (manifest key)
}

// Repo is a DirSource repository built from the shared test disks.
type Repo struct {
	Root  string
	Disks []Disk
	Dir   string // testdisks.Dir
}

// NewRepo lays out a DirSource repository of symlinks to the test disks:
// web01 has gpt.vhdx, mbr-fixed.vhdx and nopart.raw plus two config files;
// chain01 has the base.vhdx <- child.avhdx differencing chain.
func NewRepo(t testing.TB) *Repo {
	t.Helper()
	dir := testdisks.Dir(t)
	root := t.TempDir()
	r := &Repo{Root: root, Dir: dir}
	rp1 := filepath.Join(root, VM1, VM1RP1)
	rp2 := filepath.Join(root, VM2, VM2RP1)
	for _, d := range []string{rp1, rp2, filepath.Join(rp1, "config", "Virtual Machines")} {
		must(t, os.MkdirAll(d, 0o755))
	}
	link := func(rp, file string) {
		must(t, os.Symlink(filepath.Join(dir, file), filepath.Join(rp, file)))
	}
	for _, f := range []string{testdisks.GPTVHDX, testdisks.MBRVHDX, testdisks.NoPartRaw} {
		link(rp1, f)
	}
	r.Disks = append(r.Disks,
		Disk{VM1, VM1RP1, "gpt", filepath.Join(dir, testdisks.GPTVHDX), filepath.Join(dir, testdisks.GPTRaw), testdisks.GPTVHDX},
		Disk{VM1, VM1RP1, "mbr-fixed", filepath.Join(dir, testdisks.MBRVHDX), filepath.Join(dir, testdisks.MBRRaw), testdisks.MBRVHDX},
		Disk{VM1, VM1RP1, "nopart", filepath.Join(dir, testdisks.NoPartRaw), filepath.Join(dir, testdisks.NoPartRaw), testdisks.NoPartRaw},
	)
	link(rp2, testdisks.BaseVHDX)
	link(rp2, testdisks.ChildAVHDX)
	r.Disks = append(r.Disks,
		Disk{VM2, VM2RP1, "base", filepath.Join(dir, testdisks.BaseVHDX), filepath.Join(dir, testdisks.BaseRaw), testdisks.BaseVHDX},
		Disk{VM2, VM2RP1, "child", filepath.Join(dir, testdisks.ChildAVHDX), filepath.Join(dir, testdisks.ChildExpectedRaw), testdisks.ChildAVHDX},
	)
	must(t, os.WriteFile(filepath.Join(rp1, "config", ConfigVM), bytes.Repeat([]byte("vmcx"), 1000), 0o644))
	must(t, os.WriteFile(filepath.Join(rp1, "config", "notes.txt"), []byte("web01 notes\n"), 0o644))
	mt := time.Date(2026, 11, 20, 9, 59, 0, 0, time.UTC)
	must(t, os.Chtimes(filepath.Join(rp1, "config", "notes.txt"), mt, mt))
	return r
}

// AddRP adds a recovery point to VM1 atomically (prepared under a hidden
// name, then renamed), holding only nopart.raw.
func (r *Repo) AddRP(t testing.TB, id string) {
	t.Helper()
	tmp := filepath.Join(r.Root, VM1, ".tmp-"+id)
	must(t, os.MkdirAll(tmp, 0o755))
	must(t, os.Symlink(filepath.Join(r.Dir, testdisks.NoPartRaw), filepath.Join(tmp, testdisks.NoPartRaw)))
	must(t, os.Rename(tmp, filepath.Join(r.Root, VM1, id)))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// LogBuffer collects tree log lines for assertions.
type LogBuffer struct {
	mu    sync.Mutex
	lines []string
}

// Logf is a mount.Options.Logf.
func (l *LogBuffer) Logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// Contains reports whether a logged line contains s.
func (l *LogBuffer) Contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

// String returns all lines.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// MountTree mounts a tree over src with mf in a fresh directory and
// registers cleanup: unmount (lazily with fusermount3 -u -z if needed),
// wait for the server, close the tree.
func MountTree(t testing.TB, mf MountFunc, src mount.Source, opts mount.Options) (string, *mount.Tree, Mounted) {
	t.Helper()
	testenv.NeedFUSE(t)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	tree := mount.New(src, opts)
	dir := t.TempDir()
	mm, err := mf(t, tree, dir)
	if err != nil {
		tree.Close()
		t.Fatalf("mount: %v", err)
	}
	m := &tracked{Mounted: mm}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			if m.unmounted.Load() {
				// The test unmounted already.
			} else if err := m.Unmount(); err != nil {
				t.Logf("unmount: %v", err)
				exec.Command("fusermount3", "-u", "-z", dir).Run()
			}
			done := make(chan struct{})
			go func() { m.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				exec.Command("fusermount3", "-u", "-z", dir).Run()
				t.Errorf("server did not stop after unmount")
			}
			tree.Close()
		})
	})
	return dir, tree, m
}

// tracked remembers a successful unmount so cleanup does not repeat it.
type tracked struct {
	Mounted
	unmounted atomic.Bool
}

func (m *tracked) Unmount() error {
	err := m.Mounted.Unmount()
	if err == nil {
		m.unmounted.Store(true)
	}
	return err
}

// Run runs the whole suite against one adapter.
func Run(t *testing.T, mf MountFunc) {
	repo := NewRepo(t)
	logs := &LogBuffer{}
	mnt, _, _ := MountTree(t, mf, mount.DirSource{Root: repo.Root}, mount.Options{Logf: func(f string, a ...any) {
		logs.Logf(f, a...)
		t.Logf(f, a...)
	}})
	t.Run("Layout", func(t *testing.T) { testLayout(t, repo, mnt) })
	t.Run("VHDX", func(t *testing.T) { testVHDX(t, repo, mnt) })
	t.Run("Raw", func(t *testing.T) { testRaw(t, repo, mnt) })
	t.Run("GuestFiles", func(t *testing.T) { testGuestFiles(t, rpDir(mnt, VM1, VM1RP1)) })
	t.Run("CopyOut", func(t *testing.T) { testCopyOut(t, repo, rpDir(mnt, VM1, VM1RP1), filepath.Join(mnt, VM1, "latest")) })
	t.Run("Errors", func(t *testing.T) { testErrors(t, mnt) })
	t.Run("NewRecoveryPoint", func(t *testing.T) { testNewRP(t, repo, mnt) })
	t.Run("DamagedChunk", func(t *testing.T) { testDamaged(t, repo, mf) })
	t.Run("ConcurrentReaders", func(t *testing.T) { testConcurrentReaders(t, repo, mf) })
	t.Run("UnmountWhileReading", func(t *testing.T) { testUnmountWhileReading(t, repo, mf) })
}

func rpDir(mnt, vm, rp string) string { return filepath.Join(mnt, vm, rp) }

// Names lists dir, sorted.
func Names(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func wantNames(t testing.TB, dir string, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := Names(t, dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("%s: got %q, want %q", dir, got, want)
	}
}

func testLayout(t *testing.T, repo *Repo, mnt string) {
	wantNames(t, mnt, VM1, VM2)
	wantNames(t, filepath.Join(mnt, VM2), VM2RP1, "latest")
	if target, err := os.Readlink(filepath.Join(mnt, VM2, "latest")); err != nil || target != VM2RP1 {
		t.Errorf("latest -> %q, %v; want %s", target, err, VM2RP1)
	}
	rp := rpDir(mnt, VM1, VM1RP1)
	wantNames(t, rp, "config", "disks", "vm.json", "volumes")
	wantNames(t, filepath.Join(rp, "disks"), "gpt.raw", "gpt.vhdx", "mbr-fixed.raw", "mbr-fixed.vhdx", "nopart.raw", "nopart.vhdx")
	wantNames(t, filepath.Join(rp, "volumes"), "gpt-p1", "gpt-p2", "gpt-p3", "mbr-fixed-p1", "mbr-fixed-p2", "mbr-fixed-p5", "nopart-p0")
	wantNames(t, filepath.Join(rp, "config"), "Virtual Machines", "notes.txt")
	b, err := os.ReadFile(filepath.Join(rp, "config", ConfigVM))
	if err != nil || !bytes.Equal(b, bytes.Repeat([]byte("vmcx"), 1000)) {
		t.Errorf("config file: %d bytes, %v", len(b), err)
	}
	fi, err := os.Stat(filepath.Join(rp, "config", "notes.txt"))
	if err != nil || !fi.ModTime().Equal(time.Date(2026, 11, 20, 9, 59, 0, 0, time.UTC)) {
		t.Errorf("notes.txt: %v %v", fi, err)
	}
	var m map[string]any
	b, err = os.ReadFile(filepath.Join(rp, "vm.json"))
	if err != nil || json.Unmarshal(b, &m) != nil || m["vm"] != VM1 {
		t.Errorf("vm.json: %s %v", b, err)
	}
	// The recovery point's entries carry its time; files are read-only.
	fi, err = os.Stat(filepath.Join(rp, "disks", "gpt.raw"))
	if err != nil || !fi.ModTime().Equal(time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)) || fi.Mode().Perm() != 0o444 {
		t.Errorf("gpt.raw: %v %v", fi, err)
	}
	if ino := statIno(t, mnt); ino != mount.RootIno {
		t.Errorf("root inode %d, want %d", ino, mount.RootIno)
	}
	// Stable inode numbers: the same path gives the same number.
	st1, st2 := statIno(t, filepath.Join(rp, "disks", "gpt.raw")), statIno(t, filepath.Join(mnt, VM1, "latest", "disks", "gpt.raw"))
	if st1 != st2 || st1 == 0 {
		t.Errorf("inode of gpt.raw: %d via rp, %d via latest", st1, st2)
	}
	// The chain is flattened: one disk per file name, child reads through base.
	wantNames(t, filepath.Join(rpDir(mnt, VM2, VM2RP1), "disks"), "base.raw", "base.vhdx", "child.raw", "child.vhdx")
}

func statIno(t testing.TB, p string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func testVHDX(t *testing.T, repo *Repo, mnt string) {
	testenv.NeedTools(t, "qemu-img")
	for _, d := range repo.Disks {
		p := filepath.Join(rpDir(mnt, d.VM, d.RP), "disks", d.Name+".vhdx")
		if out, err := exec.Command("qemu-img", "check", "-f", "vhdx", p).CombinedOutput(); err != nil {
			t.Errorf("qemu-img check %s: %v\n%s", p, err, out)
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "vhdx", "-F", "raw", p, d.Raw).CombinedOutput(); err != nil {
			t.Errorf("qemu-img compare %s %s: %v\n%s", p, d.Raw, err, out)
		}
		// The synthesized file keeps the disk's identity.
		src, err := vhdxfs.Open(d.Source)
		if err != nil {
			t.Fatal(err)
		}
		want := src.Identity()
		src.Close()
		got, err := vhdxfs.Open(p)
		if err != nil {
			t.Errorf("open mounted %s: %v", p, err)
			continue
		}
		id := got.Identity()
		got.Close()
		if want.Format == "vhdx" && (id.DataWriteGUID != want.DataWriteGUID || id.DiskID != want.DiskID) {
			t.Errorf("%s: DataWriteGUID %s DiskID %s, want %s %s", p, id.DataWriteGUID, id.DiskID, want.DataWriteGUID, want.DiskID)
		}
		if id.VirtualSize != want.VirtualSize {
			t.Errorf("%s: virtual size %d, want %d", p, id.VirtualSize, want.VirtualSize)
		}
	}
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func testRaw(t *testing.T, repo *Repo, mnt string) {
	testenv.NeedTools(t, "qemu-img")
	for _, d := range repo.Disks {
		p := filepath.Join(rpDir(mnt, d.VM, d.RP), "disks", d.Name+".raw")
		oracle := d.Raw
		if d.Name == "mbr-fixed" {
			// One oracle made right here, as the acceptance says.
			oracle = filepath.Join(t.TempDir(), "mbr.raw")
			if out, err := exec.Command("qemu-img", "convert", "-f", "vhdx", "-O", "raw", d.Source, oracle).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert: %v\n%s", err, out)
			}
		}
		if got, want := fileSHA(t, p), fileSHA(t, oracle); got != want {
			t.Errorf("%s: sha256 %s, want %s (%s)", p, got, want, oracle)
		}
	}
}

// volumeDir maps a manifest image+partition to the volume directory of the
// recovery point directory rp.
func volumeDir(rp, image string, part int) string {
	disk := strings.TrimSuffix(image, filepath.Ext(image))
	return filepath.Join(rp, "volumes", fmt.Sprintf("%s-p%d", disk, part))
}

func testGuestFiles(t *testing.T, rp string) {
	n := 0
	for _, e := range testdisks.Manifest(t) {
		if e.Image != testdisks.GPTVHDX && e.Image != testdisks.MBRVHDX && e.Image != testdisks.NoPartRaw {
			continue
		}
		p := filepath.Join(volumeDir(rp, e.Image, e.Part), filepath.FromSlash(e.Path))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		switch e.Kind {
		case 'f':
			if !fi.Mode().IsRegular() || fi.Size() != e.Size {
				t.Errorf("%s: mode %v size %d, want file of %d", p, fi.Mode(), fi.Size(), e.Size)
			}
			if got := fileSHA(t, p); got != e.SHA256 {
				t.Errorf("%s: sha256 %s, want %s", p, got, e.SHA256)
			}
		case 'd':
			if !fi.IsDir() {
				t.Errorf("%s: mode %v, want dir", p, fi.Mode())
			}
		case 'l':
			target, err := os.Readlink(p)
			if fi.Mode()&fs.ModeSymlink == 0 || err != nil || target != e.Target {
				t.Errorf("%s: mode %v target %q %v, want symlink to %q", p, fi.Mode(), target, err, e.Target)
			}
		}
		n++
	}
	if n < 50 {
		t.Errorf("checked only %d manifest entries", n)
	}
}

// GuestFS opens the guest filesystem of a test disk directly (no tree):
// the reference a copy out of the mount is compared with.
func GuestFS(t testing.TB, diskFile string, part int) (copyout.Source, func()) {
	t.Helper()
	d, err := vhdxfs.Open(diskFile)
	if err != nil {
		t.Fatal(err)
	}
	vols, _, err := vhdxfs.Volumes(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.Partition.Index == part {
			fsys, err := v.OpenFS()
			if err != nil {
				t.Fatal(err)
			}
			return fsys, func() { fsys.Close(); d.Close() }
		}
	}
	t.Fatalf("%s: no partition %d", diskFile, part)
	return nil, nil
}

// TreeEntry is one entry of a local directory tree, for comparisons.
type TreeEntry struct {
	Kind   byte // f, d, l
	Size   int64
	SHA    string
	Target string
	MTime  time.Time
	Perm   fs.FileMode
}

// Snapshot describes every entry below root (keys are slash paths; the root
// itself is left out).
func Snapshot(t testing.TB, root string) map[string]TreeEntry {
	t.Helper()
	out := map[string]TreeEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := TreeEntry{MTime: fi.ModTime(), Perm: fi.Mode().Perm()}
		switch {
		case fi.IsDir():
			e.Kind = 'd'
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Kind = 'l'
			e.Target, _ = os.Readlink(p)
		default:
			e.Kind = 'f'
			e.Size = fi.Size()
			e.SHA = fileSHA(t, p)
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CompareTrees reports differences between got and want. Symlinks only in
// got are allowed when allowExtraLinks (cp -a copies the links copyout
// refuses to recreate).
func CompareTrees(t testing.TB, what string, got, want map[string]TreeEntry, allowExtraLinks bool) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("%s: %s missing", what, p)
		case g.Kind != w.Kind || g.Size != w.Size || g.SHA != w.SHA || g.Target != w.Target:
			t.Errorf("%s: %s = %+v, want %+v", what, p, g, w)
		case g.Kind != 'l' && !g.MTime.Equal(w.MTime):
			t.Errorf("%s: %s mtime %v, want %v", what, p, g.MTime, w.MTime)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok && !(allowExtraLinks && g.Kind == 'l') {
			t.Errorf("%s: unexpected %s (%c)", what, p, g.Kind)
		}
	}
	if len(want) == 0 {
		t.Errorf("%s: empty reference tree", what)
	}
}

// testCopyOut copies guest folders out of the recovery point rpDir, reached
// through latestDir (the VM's latest link), with cp -a.
func testCopyOut(t *testing.T, repo *Repo, rp, latest string) {
	testenv.NeedTools(t, "cp")
	cases := []struct {
		disk  string
		image string
		part  int
		sub   string
	}{
		{filepath.Join(repo.Dir, testdisks.GPTVHDX), testdisks.GPTVHDX, 3, "."},        // ext4: symlinks, deep paths, unicode
		{filepath.Join(repo.Dir, testdisks.GPTVHDX), testdisks.GPTVHDX, 2, "Folder A"}, // NTFS folder
		{filepath.Join(repo.Dir, testdisks.MBRVHDX), testdisks.MBRVHDX, 2, "DIR1"},     // FAT32 folder
		{filepath.Join(repo.Dir, testdisks.NoPartRaw), testdisks.NoPartRaw, 0, "."},    // whole-disk ext4
		{filepath.Join(repo.Dir, testdisks.GPTVHDX), testdisks.GPTVHDX, 2, "日本語フォルダ"},  // NTFS unicode
	}
	for _, c := range cases {
		fsys, done := GuestFS(t, c.disk, c.part)
		ref := filepath.Join(t.TempDir(), "ref")
		if _, err := copyout.Copy(context.Background(), fsys, c.sub, ref, copyout.Options{}); err != nil {
			t.Fatalf("reference copy: %v", err)
		}
		done()
		want := Snapshot(t, ref)

		// Through the latest link, as a user would.
		src := filepath.Join(volumeDir(latest, c.image, c.part), filepath.FromSlash(c.sub))
		dst := filepath.Join(t.TempDir(), "cp")
		if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
			t.Errorf("cp -a %s: %v\n%s", src, err, out)
			continue
		}
		CompareTrees(t, "cp -a "+c.image+"/"+c.sub, Snapshot(t, dst), want, true)
	}
}

func testErrors(t *testing.T, mnt string) {
	rp := rpDir(mnt, VM1, VM1RP1)
	if _, err := os.Stat(filepath.Join(rp, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat missing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "no-such-vm")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat missing VM: %v", err)
	}
	if _, err := os.OpenFile(filepath.Join(rp, "vm.json"), os.O_RDWR, 0); err == nil {
		t.Errorf("opened vm.json for writing")
	}
	if err := os.WriteFile(filepath.Join(rp, "new.txt"), []byte("x"), 0o644); err == nil {
		t.Errorf("created a file in a read-only mount")
	}
	if err := os.Remove(filepath.Join(rp, "vm.json")); err == nil {
		t.Errorf("removed vm.json")
	}
}

func testNewRP(t *testing.T, repo *Repo, mnt string) {
	vmDir := filepath.Join(mnt, VM1)
	wantNames(t, vmDir, VM1RP1, "latest") // cache the listing first
	repo.AddRP(t, VM1RP2)
	// A direct lookup sees it at once (an unknown name refreshes).
	if _, err := os.Stat(filepath.Join(vmDir, VM1RP2, "disks", "nopart.raw")); err != nil {
		t.Errorf("new recovery point by name: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		target, _ := os.Readlink(filepath.Join(vmDir, "latest"))
		got := Names(t, vmDir)
		if target == VM1RP2 && strings.Join(got, "|") == strings.Join([]string{VM1RP1, VM1RP2, "latest"}, "|") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after adding %s: listing %q, latest -> %q", VM1RP2, got, target)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got, want := fileSHA(t, filepath.Join(vmDir, "latest", "volumes", "nopart-p0", "readme.txt")), "0e5d8d0634a1b2ab79d64448ab7cab4e9950afb3fadab3d3e20789302634cd96"; got != want {
		t.Errorf("readme.txt via the new latest: %s", got)
	}
}

// FaultSource wraps a Source: the disks it opens fail reads that touch
// [BadOff, BadOff+BadLen) with an error naming a chunk, like a chunk that
// fails its checksum in the engine.
type FaultSource struct {
	mount.Source
	BadOff, BadLen int64
	ChunkID        string
}

func (s FaultSource) Open(ctx context.Context, vm mount.VM, rp mount.RP) (mount.Point, error) {
	p, err := s.Source.Open(ctx, vm, rp)
	if err != nil {
		return nil, err
	}
	return faultPoint{p, s}, nil
}

type faultPoint struct {
	mount.Point
	s FaultSource
}

func (p faultPoint) OpenDisk(ctx context.Context, name string) (vdisk.Disk, error) {
	d, err := p.Point.OpenDisk(ctx, name)
	if err != nil {
		return nil, err
	}
	return &faultDisk{Disk: d, s: p.s}, nil
}

// ErrCorruptChunk is what the fault disk returns, wrapped with the chunk ID.
var ErrCorruptChunk = errors.New("chunk failed its checksum")

type faultDisk struct {
	vdisk.Disk
	s     FaultSource
	Reads atomic.Int64
}

func (d *faultDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < d.s.BadOff+d.s.BadLen && off+int64(len(p)) > d.s.BadOff {
		n := 0
		if off < d.s.BadOff {
			n, _ = d.Disk.ReadAt(p[:d.s.BadOff-off], off)
		}
		return n, fmt.Errorf("engine: read chunk %s: %w", d.s.ChunkID, ErrCorruptChunk)
	}
	return d.Disk.ReadAt(p, off)
}

// FindFile returns the disk offset of the first 4 KiB of a guest file by
// scanning the raw image (the test files are stored contiguously).
func FindFile(t testing.TB, raw string, head []byte) int64 {
	t.Helper()
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		for i := 0; i+len(head) <= n; i += 512 {
			if bytes.Equal(buf[i:i+len(head)], head) {
				return off + int64(i)
			}
		}
		if err != nil {
			t.Fatalf("%s: file data not found", raw)
		}
	}
}

func testDamaged(t *testing.T, repo *Repo, mf MountFunc) {
	// Damage 64 KiB, 1 MiB into large.bin (8 MiB, ext4 on gpt p3).
	fsys, done := GuestFS(t, filepath.Join(repo.Dir, testdisks.GPTVHDX), 3)
	f, err := fsys.Open("large.bin")
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	done()
	fileOff := FindFile(t, filepath.Join(repo.Dir, testdisks.GPTRaw), head)
	const chunk = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
	src := FaultSource{Source: mount.DirSource{Root: repo.Root}, BadOff: fileOff + 1<<20, BadLen: 64 << 10, ChunkID: chunk}
	logs := &LogBuffer{}
	mnt, _, _ := MountTree(t, mf, src, mount.Options{Logf: logs.Logf})
	rp := rpDir(mnt, VM1, VM1RP1)
	p := filepath.Join(rp, "volumes", "gpt-p3", "large.bin")
	lf, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	buf := make([]byte, 256<<10)
	if _, err := lf.ReadAt(buf, 0); err != nil {
		t.Errorf("read before the damage: %v", err)
	}
	if _, err := lf.ReadAt(buf, 1<<20); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of the damaged range: %v, want EIO", err)
	}
	if _, err := lf.ReadAt(buf, 4<<20); err != nil {
		t.Errorf("read after the damage: %v", err)
	}
	if !logs.Contains(chunk) {
		t.Errorf("log does not name the chunk:\n%s", logs)
	}
	// The raw disk fails only around the damage too, and the mount serves on.
	rf, err := os.Open(filepath.Join(rp, "disks", "gpt.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	if _, err := rf.ReadAt(buf[:4096], src.BadOff); !errors.Is(err, syscall.EIO) {
		t.Errorf("raw read of the damaged range: %v, want EIO", err)
	}
	if _, err := rf.ReadAt(buf[:4096], src.BadOff+src.BadLen+4096); err != nil {
		t.Errorf("raw read next to the damage: %v", err)
	}
	if got := fileSHA(t, filepath.Join(rp, "volumes", "gpt-p3", "hello.txt")); got != "fdf7c291905cf475f22a434f1f1c188a13496eff7429e6b15dd2887845c3558f" {
		t.Errorf("hello.txt after errors: %s", got)
	}
}

func testUnmountWhileReading(t *testing.T, repo *Repo, mf MountFunc) {
	mnt, tree, m := MountTree(t, mf, mount.DirSource{Root: repo.Root}, mount.Options{CacheSize: 8 << 20})
	rp := rpDir(mnt, VM1, VM1RP1)
	files := []string{
		filepath.Join(rp, "disks", "gpt.raw"),
		filepath.Join(rp, "disks", "gpt.vhdx"),
		filepath.Join(rp, "disks", "mbr-fixed.vhdx"),
		filepath.Join(rp, "volumes", "gpt-p3", "large.bin"),
		filepath.Join(rp, "volumes", "gpt-p2", "big.bin"),
		filepath.Join(rp, "volumes", "nopart-p0", "a", "random.bin"),
	}
	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	for i, p := range files {
		wg.Add(1)
		go func(i int, p string) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(i)))
			buf := make([]byte, 64<<10)
			for !stop.Load() {
				f, err := os.Open(p)
				if err != nil {
					return // unmounted
				}
				fi, _ := f.Stat()
				for j := 0; j < 50 && !stop.Load(); j++ {
					off := rnd.Int63n(max(fi.Size()-int64(len(buf)), 1))
					if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
						break
					}
					reads.Add(1)
				}
				f.Close()
			}
		}(i, p)
	}
	// Unmount once every reader is well into its reads.
	deadline := time.Now().Add(20 * time.Second)
	for reads.Load() < int64(20*len(files)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := m.Unmount(); err != nil {
		t.Errorf("unmount while reading: %v", err)
	}
	stop.Store(true)
	wg.Wait()
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("server still running 20 s after unmount")
	}
	if err := tree.Close(); err != nil {
		t.Errorf("tree close: %v", err)
	}
	if reads.Load() == 0 {
		t.Errorf("no reads happened before the unmount")
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+mnt+" ") {
		t.Errorf("%s still mounted", mnt)
	}
}

// EngineRepo backs the test disks up into a real repository (VM web01:
// gpt.vhdx, mbr-fixed.vhdx, nopart.raw) and returns it open, with the
// recovery point and the Disks (RP filled in) for the oracle checks.
func EngineRepo(t testing.TB) (*engine.Repo, *Repo, []string) {
	t.Helper()
	dir := testdisks.Dir(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	if err := engine.Init(repoDir, engine.InitOptions{DataShards: 2, ParityShards: 1}); err != nil {
		t.Fatal(err)
	}
	er, err := engine.Open(repoDir, engine.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { er.Close() })
	sources := []string{filepath.Join(dir, testdisks.GPTVHDX), filepath.Join(dir, testdisks.MBRVHDX), filepath.Join(dir, testdisks.NoPartRaw)}
	res, err := er.Backup(context.Background(), engine.BackupOptions{VM: VM1, Sources: sources})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	r := &Repo{Root: repoDir, Dir: dir}
	id := res.Pointer.ID
	r.Disks = []Disk{
		{VM1, id, "gpt", sources[0], filepath.Join(dir, testdisks.GPTRaw), testdisks.GPTVHDX},
		{VM1, id, "mbr-fixed", sources[1], filepath.Join(dir, testdisks.MBRRaw), testdisks.MBRVHDX},
		{VM1, id, "nopart", sources[2], sources[2], testdisks.NoPartRaw},
	}
	return er, r, sources
}

// RunEngine runs the oracle checks on a mount of a real repository, and
// backs up again while mounted.
func RunEngine(t *testing.T, mf MountFunc) {
	er, repo, sources := EngineRepo(t)
	mnt, _, _ := MountTree(t, mf, mount.EngineSource{Repo: er}, mount.Options{})
	rp := rpDir(mnt, VM1, repo.Disks[0].RP)
	t.Run("VHDX", func(t *testing.T) { testVHDX(t, repo, mnt) })
	t.Run("Raw", func(t *testing.T) { testRaw(t, repo, mnt) })
	t.Run("GuestFiles", func(t *testing.T) { testGuestFiles(t, rp) })
	t.Run("CopyOut", func(t *testing.T) { testCopyOut(t, repo, rp, filepath.Join(mnt, VM1, "latest")) })
	t.Run("DamagedPack", func(t *testing.T) { testEngineDamaged(t, mf) })
	t.Run("NewRecoveryPoint", func(t *testing.T) {
		vmDir := filepath.Join(mnt, VM1)
		wantNames(t, vmDir, repo.Disks[0].RP, "latest")
		time.Sleep(1100 * time.Millisecond) // recovery point IDs have one-second resolution
		res, err := er.Backup(context.Background(), engine.BackupOptions{VM: VM1, Sources: sources[2:]})
		if err != nil {
			t.Fatalf("backup while mounted: %v", err)
		}
		id := res.Pointer.ID
		deadline := time.Now().Add(10 * time.Second)
		for {
			target, _ := os.Readlink(filepath.Join(vmDir, "latest"))
			if target == id && strings.Join(Names(t, vmDir), "|") == strings.Join([]string{repo.Disks[0].RP, id, "latest"}, "|") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("new recovery point %s not shown: %q, latest -> %q", id, Names(t, vmDir), target)
			}
			time.Sleep(200 * time.Millisecond)
		}
		wantNames(t, filepath.Join(vmDir, "latest", "disks"), "nopart.raw", "nopart.vhdx")
		if got := fileSHA(t, filepath.Join(vmDir, "latest", "disks", "nopart.raw")); got != fileSHA(t, sources[2]) {
			t.Errorf("nopart.raw of the new recovery point differs")
		}
	})
}

// testEngineDamaged damages a pack of a repository without parity and
// reads gpt.raw through the mount: the reads over the damaged bytes fail
// with EIO and name the chunk in the log, all others succeed, and the mount
// keeps serving.
func testEngineDamaged(t *testing.T, mf MountFunc) {
	dir := testdisks.Dir(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	if err := engine.Init(repoDir, engine.InitOptions{DataShards: 1, ParityShards: -1}); err != nil {
		t.Fatal(err)
	}
	er, err := engine.Open(repoDir, engine.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { er.Close() })
	res, err := er.Backup(context.Background(), engine.BackupOptions{VM: VM1, Sources: []string{filepath.Join(dir, testdisks.GPTVHDX)}})
	if err != nil {
		t.Fatal(err)
	}
	// Flip bytes in the middle of the largest shard file.
	var biggest string
	var size int64
	filepath.WalkDir(filepath.Join(repoDir, "data"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil && fi.Size() > size {
				biggest, size = p, fi.Size()
			}
		}
		return nil
	})
	if biggest == "" {
		t.Fatal("no pack files")
	}
	f, err := os.OpenFile(biggest, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0xA5}, 64)
	if _, err := f.WriteAt(junk, size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()

	logs := &LogBuffer{}
	mnt, _, _ := MountTree(t, mf, mount.EngineSource{Repo: er}, mount.Options{Logf: logs.Logf})
	rp := rpDir(mnt, VM1, res.Pointer.ID)
	raw, err := os.Open(filepath.Join(rp, "disks", "gpt.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	fi, _ := raw.Stat()
	buf := make([]byte, 64<<10)
	var good, bad int
	for off := int64(0); off < fi.Size(); off += int64(len(buf)) {
		_, err := raw.ReadAt(buf, off)
		switch {
		case err == nil || errors.Is(err, io.EOF):
			good++
		case errors.Is(err, syscall.EIO):
			bad++
		default:
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	t.Logf("damaged pack %s: %d good and %d failed 64 KiB reads", filepath.Base(biggest), good, bad)
	if bad == 0 || good < 10*bad {
		t.Errorf("%d failed reads, %d good: want a few failures around the damage", bad, good)
	}
	if !logs.Contains("chunk ") {
		t.Errorf("log does not name a chunk:\n%s", logs)
	} else {
		t.Logf("first log line: %s", strings.SplitN(logs.String(), "\n", 2)[0])
	}
	if _, err := os.ReadDir(filepath.Join(rp, "volumes")); err != nil {
		t.Errorf("mount stopped serving: %v", err)
	}
}

// testConcurrentReaders reads random ranges of several files from many
// goroutines through a mount with a tiny cache (constant eviction) and
// compares every byte with the oracles.
func testConcurrentReaders(t *testing.T, repo *Repo, mf MountFunc) {
	mnt, _, _ := MountTree(t, mf, mount.DirSource{Root: repo.Root}, mount.Options{CacheSize: 4 << 20, BlockSize: 256 << 10})
	rp := rpDir(mnt, VM1, VM1RP1)
	fsys, done := GuestFS(t, filepath.Join(repo.Dir, testdisks.GPTVHDX), 3)
	gf, err := fsys.Open("large.bin")
	if err != nil {
		t.Fatal(err)
	}
	large := make([]byte, gf.Size())
	if _, err := gf.ReadAt(large, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	gf.Close()
	done()
	type pair struct {
		got    string
		oracle io.ReaderAt
		size   int64
	}
	open := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	gptRaw := open(filepath.Join(repo.Dir, testdisks.GPTRaw))
	mbrRaw := open(filepath.Join(repo.Dir, testdisks.MBRRaw))
	st1, _ := gptRaw.Stat()
	st2, _ := mbrRaw.Stat()
	pairs := []pair{
		{filepath.Join(rp, "disks", "gpt.raw"), gptRaw, st1.Size()},
		{filepath.Join(rp, "disks", "mbr-fixed.raw"), mbrRaw, st2.Size()},
		{filepath.Join(rp, "volumes", "gpt-p3", "large.bin"), bytes.NewReader(large), int64(len(large))},
	}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			pr := pairs[g%len(pairs)]
			f, err := os.Open(pr.got)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rnd := rand.New(rand.NewSource(int64(g)))
			got, want := make([]byte, 256<<10), make([]byte, 256<<10)
			for i := 0; i < 200; i++ {
				n := 1 + rnd.Intn(len(got))
				off := rnd.Int63n(pr.size)
				if g%2 == 0 { // half the readers stream sequentially
					off = int64(i) * int64(len(got)) % pr.size
					n = len(got)
				}
				a, errA := f.ReadAt(got[:n], off)
				b, _ := pr.oracle.ReadAt(want[:n], off)
				if a != b || !bytes.Equal(got[:a], want[:b]) || (errA != nil && !errors.Is(errA, io.EOF)) {
					if bad.Add(1) < 5 {
						t.Errorf("%s: %d bytes at %d: got %d (%v), want %d", pr.got, n, off, a, errA, b)
					}
				}
			}
		}(g)
	}
	wg.Wait()
}

// LatencySource wraps a Source so that every read of a disk takes at least
// Delay, like a read from a pool on spinning disks or over a network: what
// read-ahead is for.
type LatencySource struct {
	mount.Source
	Delay time.Duration
}

func (s LatencySource) Open(ctx context.Context, vm mount.VM, rp mount.RP) (mount.Point, error) {
	p, err := s.Source.Open(ctx, vm, rp)
	if err != nil {
		return nil, err
	}
	return latencyPoint{p, s.Delay}, nil
}

type latencyPoint struct {
	mount.Point
	d time.Duration
}

func (p latencyPoint) OpenDisk(ctx context.Context, name string) (vdisk.Disk, error) {
	d, err := p.Point.OpenDisk(ctx, name)
	if err != nil {
		return nil, err
	}
	return latencyDisk{d, p.d}, nil
}

type latencyDisk struct {
	vdisk.Disk
	d time.Duration
}

func (d latencyDisk) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(d.d)
	return d.Disk.ReadAt(p, off)
}
