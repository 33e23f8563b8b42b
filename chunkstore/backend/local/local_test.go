package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/backendtest"
)

func open(t testing.TB, dir string, opts *Options) *Backend {
	t.Helper()
	b, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts *Options
	}{
		{"default", nil},
		{"nocache", &Options{MaxOpenFiles: -1}},
		// A cache of two handles evicts constantly under the concurrent
		// test, exercising the refcounted close.
		{"cache2", &Options{MaxOpenFiles: 2}},
		{"buffered", &Options{BufferedWrites: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backendtest.Run(t, func(t *testing.T) backend.Backend {
				b, err := Open(t.TempDir(), tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { assertNoTempFiles(t, b.Root()) })
				return b
			})
		})
	}
}

// tempFiles returns the temp files under root.
func tempFiles(t testing.TB, root string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), backend.ReservedPrefix) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// assertNoTempFiles checks that failed Puts cleaned up after themselves on
// disk, not only in List.
func assertNoTempFiles(t testing.TB, root string) {
	t.Helper()
	if tmp := tempFiles(t, root); len(tmp) > 0 {
		t.Errorf("temp files left on disk: %q", tmp)
	}
}

func TestTempFilesInvisibleAndCleaned(t *testing.T) {
	dir := t.TempDir()
	b := open(t, dir, nil)
	ctx := context.Background()
	backendtest.Put(t, b, "pool0/ab/obj", []byte("data"))

	// Debris of a crashed Put: one old, one fresh (a Put in progress).
	oldTmp := filepath.Join(dir, "pool0", "ab", ".tmp-111")
	newTmp := filepath.Join(dir, "pool0", ".tmp-222")
	for _, p := range []string{oldTmp, newTmp} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(oldTmp, past, past); err != nil {
		t.Fatal(err)
	}
	if got := backendtest.Names(t, b, ""); !slices.Equal(got, []string{"pool0/ab/obj"}) {
		t.Errorf("List = %q, want only the object", got)
	}
	if _, err := b.Stat(ctx, "pool0/ab/.tmp-111"); !errors.Is(err, backend.ErrInvalidName) {
		t.Errorf("Stat of a temp file = %v, want ErrInvalidName", err)
	}

	// Open removes the old one and keeps the fresh one.
	b2 := open(t, dir, nil)
	if _, err := os.Stat(oldTmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old temp file survived Open: %v", err)
	}
	if _, err := os.Stat(newTmp); err != nil {
		t.Errorf("fresh temp file removed by Open: %v", err)
	}
	n, err := b2.Clean(ctx, 0)
	if err != nil || n != 1 {
		t.Errorf("Clean(0) = %d, %v; want 1", n, err)
	}
	assertNoTempFiles(t, dir)
	if got := backendtest.Get(t, b2, "pool0/ab/obj"); string(got) != "data" {
		t.Error("Clean touched an object")
	}
}

func TestPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("POSIX modes")
	}
	dir := filepath.Join(t.TempDir(), "repo")
	b := open(t, dir, nil)
	backendtest.Put(t, b, "pool0/ab/obj", []byte("secret"))
	for path, want := range map[string]fs.FileMode{
		dir:                                fs.ModeDir | 0o700,
		filepath.Join(dir, "pool0"):        fs.ModeDir | 0o700,
		filepath.Join(dir, "pool0/ab"):     fs.ModeDir | 0o700,
		filepath.Join(dir, "pool0/ab/obj"): 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
}

func TestListSkipsStrays(t *testing.T) {
	dir := t.TempDir()
	b := open(t, dir, nil)
	backendtest.Put(t, b, "p/ok", []byte("1"))
	// Things an operator or fsck may leave in a repository directory.
	for _, d := range []string{"lost+found", "p/bad dir"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, d, "f"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "p", "white space"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		if err := os.Symlink("ok", filepath.Join(dir, "p", "link")); err != nil {
			t.Fatal(err)
		}
	}
	if got := backendtest.Names(t, b, ""); !slices.Equal(got, []string{"p/ok"}) {
		t.Errorf("List = %q, want only p/ok", got)
	}
}

func TestOpenNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f, nil); err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
}

func TestClosed(t *testing.T) {
	b, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.Put(t, b, "x", []byte("1"))
	backendtest.Get(t, b, "x")
	b.Close()
	ctx := context.Background()
	if _, err := b.ReadAt(ctx, "x", make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
	if err := b.Put(ctx, "y", bytes.NewReader(nil), 0); err == nil {
		t.Error("Put after Close succeeded")
	}
}

// openFDs counts this process's open file descriptors (Linux only).
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("needs /proc/self/fd")
	}
	return len(ents)
}

func TestHandleCacheBounded(t *testing.T) {
	b := open(t, t.TempDir(), &Options{MaxOpenFiles: 8})
	for i := range 50 {
		backendtest.Put(t, b, fmt.Sprintf("o/%02d", i), backendtest.Data(uint64(i), 100))
	}
	before := openFDs(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				name := fmt.Sprintf("o/%02d", (i*7+g)%50)
				p := make([]byte, 10)
				if _, err := b.ReadAt(context.Background(), name, p, 5); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := b.handles.len(); n > 8 {
		t.Errorf("cache holds %d handles, max 8", n)
	}
	if after := openFDs(t); after > before+8 {
		t.Errorf("open fds grew from %d to %d with a cache of 8", before, after)
	}
	b.Close()
	if after := openFDs(t); after > before {
		t.Errorf("Close left %d fds open (before %d)", after, before)
	}
}

// The cache must serve repeated reads of one object from one open file.
func TestHandleCacheHits(t *testing.T) {
	b := open(t, t.TempDir(), nil)
	backendtest.Put(t, b, "x", backendtest.Data(1, 1000))
	opens := 0
	for range 100 {
		h, err := b.handles.get("x", func() (*os.File, error) { opens++; return openRegular(b.path("x")) })
		if err != nil {
			t.Fatal(err)
		}
		b.handles.release(h)
	}
	if opens != 1 {
		t.Errorf("100 reads opened the file %d times, want 1", opens)
	}
}

// A Put that replaces the object while a reader is opening the old file
// must keep the old handle out of the cache (the epoch check).
func TestHandleCacheInvalidateDuringOpen(t *testing.T) {
	b := open(t, t.TempDir(), nil)
	backendtest.Put(t, b, "x", []byte("old"))
	h, err := b.handles.get("x", func() (*os.File, error) {
		f, err := openRegular(b.path("x"))
		backendtest.Put(t, b, "x", []byte("new")) // lands mid-open
		return f, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if h.cached || b.handles.len() != 0 {
		t.Fatal("handle opened before a concurrent Put was cached")
	}
	b.handles.release(h)
	if _, err := h.f.Stat(); err == nil {
		t.Error("uncached handle not closed on release")
	}
	if got := backendtest.Get(t, b, "x"); string(got) != "new" {
		t.Errorf("read %q after replace, want new", got)
	}
}
