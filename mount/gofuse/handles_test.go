//go:build linux

package gofuse

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/internal/fusetest"
)

// mountCapture mounts like mountGoFuse with opts and keeps the *Server.
func mountCapture(opts Options, srv **Server) fusetest.MountFunc {
	return func(t testing.TB, tree *mount.Tree, dir string) (fusetest.Mounted, error) {
		s, err := Mount(tree, dir, opts)
		*srv = s
		return s, err
	}
}

// rpFiles lists the regular files of VM1's first recovery point under mnt
// (relative paths), disk images excluded (large, and read by other tests).
func rpFiles(t *testing.T, mnt string) []string {
	t.Helper()
	rp := filepath.Join(mnt, fusetest.VM1, fusetest.VM1RP1)
	var files []string
	err := filepath.WalkDir(rp, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && !strings.HasPrefix(p, filepath.Join(rp, "disks")) {
			rel, _ := filepath.Rel(mnt, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 6 {
		t.Fatalf("only %d files in %s: %v", len(files), rp, files)
	}
	return files
}

// treeBytes reads rel straight from the tree, without FUSE: the oracle.
func treeBytes(t *testing.T, tree *mount.Tree, rel string) []byte {
	t.Helper()
	n := tree.Root()
	for _, name := range strings.Split(rel, string(filepath.Separator)) {
		c, err := n.Lookup(context.Background(), name)
		if err != nil {
			t.Fatalf("tree lookup %s: %v", rel, err)
		}
		n = c
	}
	h, err := n.Open(context.Background())
	if err != nil {
		t.Fatalf("tree open %s: %v", rel, err)
	}
	defer h.Close()
	b, err := io.ReadAll(io.NewSectionReader(h, 0, h.Size()))
	if err != nil {
		t.Fatalf("tree read %s: %v", rel, err)
	}
	return b
}

// TestNoOpenRoundTrips: OPEN answers ENOSYS once and the kernel opens
// files by itself from then on (no OPEN, no RELEASE, page cache kept). Reads
// then use each node's shared handle, kept in a bounded LRU: with room for
// two, reading every file of a recovery point in two interleaved passes
// from several goroutines gives the tree's bytes, never more than two
// handles stay open, and unmounting closes them all.
func TestNoOpenRoundTrips(t *testing.T) {
	repo := fusetest.NewRepo(t)
	var srv *Server
	mnt, tree, m := fusetest.MountTree(t, mountCapture(Options{}, &srv), mount.DirSource{Root: repo.Root}, mount.Options{})
	if !srv.hc.noOpen.Load() {
		t.Fatal("the kernel did not offer FUSE_NO_OPEN_SUPPORT (Linux >= 4.19 does)")
	}
	srv.hc.mu.Lock()
	srv.hc.max = 2
	srv.hc.mu.Unlock()
	files := rpFiles(t, mnt)
	want := make(map[string][]byte, len(files))
	for _, f := range files {
		want[f] = treeBytes(t, tree, f)
	}
	// One open first: OPENs already in flight when the kernel learns
	// ENOSYS are answered ENOSYS too, so concurrent first opens would make
	// the count below depend on timing.
	if _, err := os.ReadFile(filepath.Join(mnt, files[0])); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pass := range 2 {
				for i := range files {
					f := files[(i+g*len(files)/3)%len(files)]
					got, err := os.ReadFile(filepath.Join(mnt, f))
					if err != nil {
						t.Errorf("pass %d: %v", pass, err)
						return
					}
					if !bytes.Equal(got, want[f]) {
						t.Errorf("pass %d: %s: %d bytes differ from the tree's %d", pass, f, len(got), len(want[f]))
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := srv.hc.opens.Load(); n != 1 {
		t.Errorf("%d OPEN requests for %d files read 6 times each, want 1", n, len(files))
	}
	if n := srv.hc.open(); n == 0 || n > 2 {
		t.Errorf("%d shared handles open, want 1 or 2", n)
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if n := srv.hc.open(); n != 0 {
		t.Errorf("%d shared handles open after unmount", n)
	}
}

// TestOpenRequests: on a kernel without FUSE_NO_OPEN_SUPPORT (simulated)
// every open is an OPEN with its own handle, as before, and reads are the
// tree's bytes; nothing goes to the shared handles.
func TestOpenRequests(t *testing.T) {
	repo := fusetest.NewRepo(t)
	var srv *Server
	mnt, tree, _ := fusetest.MountTree(t, mountCapture(Options{openRequests: true}, &srv), mount.DirSource{Root: repo.Root}, mount.Options{})
	files := rpFiles(t, mnt)
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(mnt, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, treeBytes(t, tree, f)) {
			t.Errorf("%s differs from the tree's bytes", f)
		}
	}
	if n := srv.hc.opens.Load(); n < int64(len(files)) {
		t.Errorf("%d OPEN requests for %d files", n, len(files))
	}
	if n := srv.hc.open(); n != 0 {
		t.Errorf("%d shared handles with OPEN requests answered", n)
	}
}

// TestDirCache: the listing of a directory inside a recovery point is
// made once and then served by the kernel (FOPEN_CACHE_DIR); a VM
// directory is listed anew every time, so a recovery point added while
// mounted shows at the next listing.
func TestDirCache(t *testing.T) {
	repo := fusetest.NewRepo(t)
	var srv *Server
	mnt, _, _ := fusetest.MountTree(t, mountCapture(Options{}, &srv), mount.DirSource{Root: repo.Root}, mount.Options{})
	rp := filepath.Join(mnt, fusetest.VM1, fusetest.VM1RP1)
	list := func(dir string) []string { return fusetest.Names(t, dir) }
	first := list(rp)
	n0 := srv.hc.listings.Load()
	for range 3 {
		if got := list(rp); strings.Join(got, "/") != strings.Join(first, "/") {
			t.Fatalf("listing changed: %v, then %v", first, got)
		}
	}
	if n := srv.hc.listings.Load() - n0; n != 0 {
		t.Errorf("3 more listings of %s made %d READDIRs, want 0 (kernel cache)", rp, n)
	}
	vm := filepath.Join(mnt, fusetest.VM1)
	before := list(vm)
	repo.AddRP(t, fusetest.VM1RP2)
	n0 = srv.hc.listings.Load()
	after := list(vm)
	if srv.hc.listings.Load() == n0 {
		t.Errorf("the VM directory was listed from the kernel's cache")
	}
	// The tree itself looks for new recovery points at most once a second
	// (mount.DefaultRefresh).
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(strings.Join(after, "/"), fusetest.VM1RP2) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		after = list(vm)
	}
	if !strings.Contains(strings.Join(after, "/"), fusetest.VM1RP2) || strings.Contains(strings.Join(before, "/"), fusetest.VM1RP2) {
		t.Errorf("VM directory before %v, after adding %s %v", before, fusetest.VM1RP2, after)
	}
}
