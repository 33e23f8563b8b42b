//go:build linux

package mount_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/engine"
	"github.com/vmvault/vmvault/internal/copyout"
	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/internal/fusetest"
	"github.com/vmvault/vmvault/vhdxfs"
)

var _ copyout.Source = (*mount.Tree)(nil)

func newTree(t *testing.T, src mount.Source, opts mount.Options) *mount.Tree {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	tr := mount.New(src, opts)
	t.Cleanup(func() { tr.Close() })
	return tr
}

func shaOf(t testing.TB, tr *mount.Tree, p string) string {
	t.Helper()
	f, err := tr.Open(p)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, f.Size())); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func listNames(t *testing.T, tr *mount.Tree, p string) string {
	t.Helper()
	ents, err := tr.ReadDir(p)
	if err != nil {
		t.Fatalf("readdir %s: %v", p, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	return strings.Join(out, " ")
}

// The path API: io/fs paths, no symlink following except through Follow,
// sentinel errors the adapters translate.
func TestTreePaths(t *testing.T) {
	repo := fusetest.NewRepo(t)
	tr := newTree(t, mount.DirSource{Root: repo.Root}, mount.Options{})
	ctx := context.Background()
	if got := listNames(t, tr, "."); got != "chain01 web01" {
		t.Errorf("root: %s", got)
	}
	if got := listNames(t, tr, "web01"); got != fusetest.VM1RP1+" latest" {
		t.Errorf("web01: %s", got)
	}
	fi, err := tr.Stat("web01/latest")
	if err != nil || fi.Mode&fs.ModeSymlink == 0 || fi.Target != fusetest.VM1RP1 {
		t.Errorf("latest: %+v %v", fi, err)
	}
	if _, err := tr.Stat("web01/latest/disks"); !errors.Is(err, mount.ErrNotDir) {
		t.Errorf("Stat through a symlink: %v, want ErrNotDir", err)
	}
	n, err := tr.Follow(ctx, "web01/latest/volumes/gpt-p3/dir/sub/link-up", true)
	if err != nil || n.Path() != "web01/"+fusetest.VM1RP1+"/volumes/gpt-p3/hello.txt" {
		t.Errorf("Follow: %v %v", n, err)
	}
	if _, err := tr.Follow(ctx, "web01/latest/volumes/gpt-p3/link-abs", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Follow of an absolute guest link: %v", err)
	}
	for p, want := range map[string]error{
		"nope":                               fs.ErrNotExist,
		"web01/nope":                         fs.ErrNotExist,
		"web01/" + fusetest.VM1RP1 + "/nope": fs.ErrNotExist,
		"../x":                               fs.ErrInvalid,
		"/web01":                             fs.ErrInvalid,
	} {
		if _, err := tr.Stat(p); !errors.Is(err, want) {
			t.Errorf("Stat(%q): %v, want %v", p, err, want)
		}
	}
	rp := "web01/" + fusetest.VM1RP1
	if _, err := tr.Open(rp + "/disks"); !errors.Is(err, mount.ErrIsDir) {
		t.Errorf("open a directory: %v", err)
	}
	if _, err := tr.Readlink(rp + "/vm.json"); !errors.Is(err, mount.ErrNotLink) {
		t.Errorf("readlink a file: %v", err)
	}
	if _, err := tr.ReadDir(rp + "/vm.json"); !errors.Is(err, mount.ErrNotDir) {
		t.Errorf("readdir a file: %v", err)
	}
	// Stable inode numbers: a second tree gives the same numbers.
	tr2 := newTree(t, mount.DirSource{Root: repo.Root}, mount.Options{})
	a, _ := tr.Stat(rp + "/volumes/gpt-p2/Folder A")
	b, _ := tr2.Stat(rp + "/volumes/gpt-p2/Folder A")
	if a.Ino == 0 || a.Ino != b.Ino {
		t.Errorf("inode %d vs %d", a.Ino, b.Ino)
	}
	// Hard links are separate files.
	h1, _ := tr.Stat(rp + "/volumes/gpt-p3/hello.txt")
	h2, _ := tr.Stat(rp + "/volumes/gpt-p3/dir/hardlink.txt")
	if h1.Ino == h2.Ino || h1.Nlink != 1 || h2.Nlink != 1 {
		t.Errorf("hard links: %+v %+v", h1, h2)
	}
}

// Every guest file of the manifest through the path API (no FUSE).
func TestTreeGuestFiles(t *testing.T) {
	repo := fusetest.NewRepo(t)
	tr := newTree(t, mount.DirSource{Root: repo.Root}, mount.Options{})
	checkManifest(t, tr, "web01/"+fusetest.VM1RP1)
}

func checkManifest(t *testing.T, tr *mount.Tree, rp string) {
	t.Helper()
	n := 0
	for _, e := range testdisks.Manifest(t) {
		if e.Image != testdisks.GPTVHDX && e.Image != testdisks.MBRVHDX && e.Image != testdisks.NoPartRaw {
			continue
		}
		disk := strings.TrimSuffix(e.Image, filepath.Ext(e.Image))
		p := path.Join(rp, "volumes", disk+"-p"+strconv.Itoa(e.Part), e.Path)
		fi, err := tr.Stat(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		switch e.Kind {
		case 'f':
			if got := shaOf(t, tr, p); got != e.SHA256 || fi.Size != e.Size {
				t.Errorf("%s: sha %s size %d", p, got, fi.Size)
			}
		case 'd':
			if !fi.IsDir() {
				t.Errorf("%s: not a dir", p)
			}
		case 'l':
			if target, err := tr.Readlink(p); err != nil || target != e.Target {
				t.Errorf("%s: -> %q %v", p, target, err)
			}
		}
		n++
	}
	if n < 50 {
		t.Errorf("checked %d entries", n)
	}
}

// What `vmvault files cp` does (copyout over the tree) gives exactly what a
// copy straight from the guest filesystem gives.
func TestTreeCopyOut(t *testing.T) {
	repo := fusetest.NewRepo(t)
	tr := newTree(t, mount.DirSource{Root: repo.Root}, mount.Options{})
	rp := "web01/" + fusetest.VM1RP1
	for _, c := range []struct {
		file string
		part int
		vol  string
		sub  string
	}{
		{testdisks.GPTVHDX, 3, "gpt-p3", "."},
		{testdisks.GPTVHDX, 2, "gpt-p2", "Folder A"},
		{testdisks.GPTVHDX, 2, "gpt-p2", "Ünïcödé"},
		{testdisks.MBRVHDX, 2, "mbr-fixed-p2", "DIR1"},
		{testdisks.MBRVHDX, 5, "mbr-fixed-p5", "."},
		{testdisks.NoPartRaw, 0, "nopart-p0", "a"},
	} {
		fsys, done := fusetest.GuestFS(t, filepath.Join(repo.Dir, c.file), c.part)
		ref := filepath.Join(t.TempDir(), "ref")
		if _, err := copyout.Copy(context.Background(), fsys, c.sub, ref, copyout.Options{}); err != nil {
			t.Fatal(err)
		}
		done()
		got := filepath.Join(t.TempDir(), "got")
		if _, err := copyout.Copy(context.Background(), tr, path.Join(rp, "volumes", c.vol, c.sub), got, copyout.Options{}); err != nil {
			t.Fatalf("copy from tree: %v", err)
		}
		fusetest.CompareTrees(t, c.vol+"/"+c.sub, fusetest.Snapshot(t, got), fusetest.Snapshot(t, ref), false)
	}
}

// A partition whose filesystem we do not read is shown as volume.img.
func TestTreeVolumeImg(t *testing.T) {
	dir := t.TempDir()
	rp := filepath.Join(dir, "vm", "2026-01-01T000000Z")
	if err := os.MkdirAll(rp, 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4<<20)
	for i := range b {
		b[i] = byte(i % 251)
	}
	if err := os.WriteFile(filepath.Join(rp, "blob.raw"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	tr := newTree(t, mount.DirSource{Root: dir}, mount.Options{})
	if got := listNames(t, tr, "vm/2026-01-01T000000Z/volumes/blob-p0"); got != "volume.img" {
		t.Fatalf("volume dir: %s", got)
	}
	sum := sha256.Sum256(b)
	if got := shaOf(t, tr, "vm/2026-01-01T000000Z/volumes/blob-p0/volume.img"); got != hex.EncodeToString(sum[:]) {
		t.Errorf("volume.img content differs")
	}
}

// The engine-backed tree: back up the test disks into a real repository,
// read them back through the tree, and see a recovery point made while the
// tree is open appear in it.
func TestEngineSource(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	dir := testdisks.Dir(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	if err := engine.Init(repoDir, engine.InitOptions{DataShards: 2, ParityShards: 1}); err != nil {
		t.Fatal(err)
	}
	repo, err := engine.Open(repoDir, engine.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repo.Close() })
	vmDir := filepath.Join(t.TempDir(), "web01")
	cfg := filepath.Join(vmDir, "Virtual Machines", "4A1B2C3D-0000-4000-8000-000000000001.vmcx")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Repeat("vmcx", 5000)), 0o644); err != nil {
		t.Fatal(err)
	}
	sources := []string{vmDir, filepath.Join(dir, testdisks.GPTVHDX), filepath.Join(dir, testdisks.NoPartRaw)}
	ctx := context.Background()
	res, err := repo.Backup(ctx, engine.BackupOptions{VM: "web01", Sources: sources})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	tr := newTree(t, mount.EngineSource{Repo: repo}, mount.Options{Refresh: 10 * time.Millisecond})
	rp := "web01/" + res.Pointer.ID
	if got := listNames(t, tr, rp); got != "config disks vm.json volumes" {
		t.Fatalf("%s: %s", rp, got)
	}
	if got := listNames(t, tr, rp+"/disks"); got != "gpt.raw gpt.vhdx nopart.raw nopart.vhdx" {
		t.Errorf("disks: %s", got)
	}
	if got := shaOf(t, tr, rp+"/config/Virtual Machines/4A1B2C3D-0000-4000-8000-000000000001.vmcx"); got != fileSHA(t, cfg) {
		t.Errorf("config file differs")
	}
	if got, want := shaOf(t, tr, rp+"/disks/gpt.raw"), fileSHA(t, filepath.Join(dir, testdisks.GPTRaw)); got != want {
		t.Errorf("gpt.raw differs from qemu-img convert")
	}
	// Copy the synthesized VHDX out and let qemu-img judge it.
	out := t.TempDir()
	if _, err := copyout.Copy(ctx, tr, rp+"/disks/gpt.vhdx", out, copyout.Options{}); err != nil {
		t.Fatal(err)
	}
	vx := filepath.Join(out, "gpt.vhdx")
	if b, err := exec.Command("qemu-img", "check", vx).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check: %v\n%s", err, b)
	}
	if b, err := exec.Command("qemu-img", "compare", "-f", "vhdx", "-F", "raw", vx, filepath.Join(dir, testdisks.GPTRaw)).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare: %v\n%s", err, b)
	}
	src, _ := vhdxfs.Open(filepath.Join(dir, testdisks.GPTVHDX))
	got, err := vhdxfs.Open(vx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Identity().DataWriteGUID != src.Identity().DataWriteGUID || got.Identity().DiskID != src.Identity().DiskID {
		t.Errorf("identity not kept: %+v vs %+v", got.Identity(), src.Identity())
	}
	got.Close()
	src.Close()
	// Guest files from the chunks.
	for _, e := range testdisks.ManifestFor(t, testdisks.GPTVHDX, 3) {
		if e.Kind == 'f' {
			if got := shaOf(t, tr, rp+"/volumes/gpt-p3/"+e.Path); got != e.SHA256 {
				t.Errorf("%s: sha differs", e.Path)
			}
		}
	}
	// A second recovery point while the tree is open.
	time.Sleep(1100 * time.Millisecond) // recovery point IDs have one-second resolution
	res2, err := repo.Backup(ctx, engine.BackupOptions{VM: "web01", Sources: sources})
	if err != nil {
		t.Fatalf("second backup: %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	if got, want := listNames(t, tr, "web01"), res.Pointer.ID+" "+res2.Pointer.ID+" latest"; got != want {
		t.Errorf("after a new backup: %q, want %q", got, want)
	}
	if target, err := tr.Readlink("web01/latest"); err != nil || target != res2.Pointer.ID {
		t.Errorf("latest -> %q %v", target, err)
	}
	var m map[string]any
	f, err := tr.Open("web01/" + res2.Pointer.ID + "/vm.json")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, f.Size())
	f.ReadAt(b, 0)
	f.Close()
	if err := json.Unmarshal(b, &m); err != nil || m["vm"] != "web01" || m["id"] != res2.Pointer.ID {
		t.Errorf("vm.json: %v %s", err, b)
	}
	if strings.Contains(string(b), "segments") || strings.Contains(string(b), "chunks") {
		t.Errorf("vm.json carries extent maps or chunk lists")
	}
}

// TestLatestInoFollowsTarget: latest is a new inode when it moves (the FUSE
// adapter lets the kernel cache link targets, so a moved link must not be
// the inode whose target the kernel already holds), and listing, lookup
// and stat agree on its number.
func TestLatestInoFollowsTarget(t *testing.T) {
	repo := fusetest.NewRepo(t)
	tr := newTree(t, mount.DirSource{Root: repo.Root}, mount.Options{Refresh: time.Millisecond})
	ctx := context.Background()
	ino := func() uint64 {
		t.Helper()
		fi, err := tr.Stat("web01/latest")
		if err != nil {
			t.Fatal(err)
		}
		kids, err := tr.Root().Lookup(ctx, "web01")
		if err != nil {
			t.Fatal(err)
		}
		ns, err := kids.ReadDir(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.Name() == "latest" && n.Ino() != fi.Ino {
				t.Errorf("latest: inode %d listed, %d by stat", n.Ino(), fi.Ino)
			}
		}
		return fi.Ino
	}
	before := ino()
	if again := ino(); again != before {
		t.Errorf("latest changed inode without moving: %d, %d", before, again)
	}
	repo.AddRP(t, fusetest.VM1RP2)
	time.Sleep(5 * time.Millisecond)
	if target, err := tr.Readlink("web01/latest"); err != nil || target != fusetest.VM1RP2 {
		t.Fatalf("latest -> %q, %v; want %s", target, err, fusetest.VM1RP2)
	}
	if after := ino(); after == before {
		t.Errorf("latest moved to %s but kept inode %d", fusetest.VM1RP2, after)
	}
}
