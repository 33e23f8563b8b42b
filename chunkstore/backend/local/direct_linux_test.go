//go:build linux

package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/backendtest"
)

// directSizes straddle the O_DIRECT threshold, the alignment and the copy
// buffer, so every padding and truncation case is written and read back.
var directSizes = []int{0, 1, 4095, 4096, directMin - 1, directMin, directMin + 1, directMin + 4096,
	directBufSize - 1, directBufSize, directBufSize + 1, 3*directBufSize + 17}

// residentPages counts the pages of path in the page cache (mincore).
func residentPages(t *testing.T, path string) (resident, total int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() == 0 {
		return 0, 0
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for _, v := range vec {
		if v&1 != 0 {
			resident++
		}
	}
	return resident, len(vec)
}

// directSupported probes dir's filesystem with an aligned O_DIRECT write of
// our own, independently of the backend's code.
func directSupported(t *testing.T, dir string) bool {
	f, err := os.OpenFile(dir+"/probe", os.O_CREATE|os.O_WRONLY|unix.O_DIRECT, 0o600)
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := (*directBufs.Get().(*[]byte))[:directAlign]
	_, err = f.WriteAt(buf, 0)
	return err == nil
}

func TestDirectWrites(t *testing.T) {
	b := open(t, t.TempDir(), nil)
	var fs unix.Statfs_t
	inMemory := unix.Statfs(b.Root(), &fs) == nil && fs.Type == unix.TMPFS_MAGIC
	supported := directSupported(t, b.Root())
	if !supported {
		// tmpfs before Linux 6.6 and some FUSE filesystems refuse
		// O_DIRECT; TestDirectFallback covers that path.
		t.Logf("%s refuses O_DIRECT: objects are written buffered", b.Root())
	}
	if inMemory {
		t.Logf("%s is tmpfs: its pages are the file, so the page-cache check is left out", b.Root())
	}
	for i, n := range directSizes {
		name := fmt.Sprintf("pool0/ab/obj%02d", i)
		data := backendtest.Data(uint64(i), n)
		backendtest.Put(t, b, name, data)
		if b.noDirect.Load() {
			if supported {
				t.Fatalf("%d bytes: the backend turned O_DIRECT off on a filesystem that takes it", n)
			}
		} else if n >= directMin && !inMemory {
			// Written with O_DIRECT, the object bypassed the page cache:
			// at most the padded tail may be cached.
			if res, total := residentPages(t, b.path(name)); res > 1 {
				t.Errorf("%d bytes: %d of %d pages in the page cache after an O_DIRECT write", n, res, total)
			}
		}
		fi, err := os.Stat(b.path(name))
		if err != nil || fi.Size() != int64(n) {
			t.Fatalf("%d bytes: file size %v, %v", n, fi.Size(), err)
		}
		if got := backendtest.Get(t, b, name); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back differs", n)
		}
	}
	assertNoTempFiles(t, b.Root())
}

func TestDirectFallback(t *testing.T) {
	testDirectUnsupported = true
	defer func() { testDirectUnsupported = false }()
	b := open(t, t.TempDir(), nil)
	for i, n := range directSizes {
		name := fmt.Sprintf("o/%02d", i)
		data := backendtest.Data(uint64(100+i), n)
		backendtest.Put(t, b, name, data)
		if got := backendtest.Get(t, b, name); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back differs after the buffered fallback", n)
		}
	}
	if !b.noDirect.Load() {
		t.Fatal("a refused O_DIRECT write did not turn O_DIRECT off for the backend")
	}
}

// A source with fewer or more bytes than declared fails the Put on the
// O_DIRECT path too, and leaves neither the object nor a temp file.
func TestDirectWrongLength(t *testing.T) {
	b := open(t, t.TempDir(), nil)
	n := 2*directBufSize + 5
	data := backendtest.Data(7, n)
	for _, c := range []struct {
		name string
		r    io.Reader
		size int64
	}{
		{"short", bytes.NewReader(data[:n-1]), int64(n)},
		{"long", bytes.NewReader(data), int64(n - 1)},
		{"short-in-first-buffer", bytes.NewReader(data[:directMin+1]), int64(n)},
	} {
		err := b.Put(context.Background(), "o/"+c.name, c.r, c.size)
		if err == nil {
			t.Fatalf("%s: Put succeeded", c.name)
		}
		if _, serr := os.Stat(b.path("o/" + c.name)); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("%s: object exists after a failed Put (%v)", c.name, err)
		}
	}
	assertNoTempFiles(t, b.Root())
}

// TestPrefetchLoadsPageCache: an object written past the page cache is not
// resident; Prefetch of a range starts reading it in without a read of
// ours, and the object reads back unchanged.
func TestPrefetchLoadsPageCache(t *testing.T) {
	b := open(t, t.TempDir(), nil)
	var fs unix.Statfs_t
	if unix.Statfs(b.Root(), &fs) == nil && fs.Type == unix.TMPFS_MAGIC || !directSupported(t, b.Root()) {
		t.Logf("%s: tmpfs or no O_DIRECT: residency cannot be observed here", b.Root())
		return
	}
	data := backendtest.Data(9, 4<<20)
	backendtest.Put(t, b, "o/x", data)
	if res, _ := residentPages(t, b.path("o/x")); res > 1 {
		t.Fatalf("%d pages resident before Prefetch", res)
	}
	const off, n = 1 << 20, 2 << 20
	b.Prefetch(context.Background(), "o/x", off, n)
	want := n / os.Getpagesize()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		res, _ := residentPages(t, b.path("o/x"))
		if res >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pages resident 5 s after a Prefetch of %d", res, want)
		}
	}
	b.Prefetch(context.Background(), "missing", 0, 1) // a hint: no error, no panic
	b.Prefetch(context.Background(), "o/x", -1, 5)
	if got := backendtest.Get(t, b, "o/x"); !bytes.Equal(got, data) {
		t.Fatal("object changed")
	}
}

// alignedCopy returns a copy of b in 4 KiB-aligned memory, shifted by skew
// bytes (skew 0: aligned).
func alignedCopy(b []byte, skew int) []byte {
	m := backend.AlignedBuffer(skew + len(b))
	copy(m[skew:], b)
	return m[skew:]
}

// TestDirectWritesFromBuffers: a Put of in-memory slices (backend.Buffers,
// as shards are put) writes aligned slices from where they are and gathers
// the others; every layout of aligned and unaligned, short and long slices
// reads back exactly, with the O_DIRECT path on and after a fallback.
func TestDirectWritesFromBuffers(t *testing.T) {
	layouts := map[string][]struct{ n, skew int }{
		"shard":          {{4096, 8}, {8192, 16}, {3 << 20, 0}},    // header, table, aligned data
		"shard-odd-tail": {{4096, 8}, {4096, 16}, {2<<20 + 17, 0}}, // data ends unaligned
		"unaligned-data": {{4096, 8}, {4096, 16}, {2 << 20, 1}},    // data memory not aligned
		"odd-offset":     {{100, 0}, {1 << 20, 0}, {1<<20 + 5, 0}}, // aligned memory at odd file offsets
		"many-small":     {{3000, 0}, {5000, 3}, {70000, 0}, {200000, 0}, {1 << 20, 0}, {1, 0}},
		"one-aligned":    {{4 << 20, 0}},
	}
	for _, fallback := range []bool{false, true} {
		for name, l := range layouts {
			t.Run(fmt.Sprintf("%s-fallback%v", name, fallback), func(t *testing.T) {
				testDirectUnsupported = fallback
				defer func() { testDirectUnsupported = false }()
				b := open(t, t.TempDir(), nil)
				var parts [][]byte
				var want []byte
				for i, p := range l {
					d := backendtest.Data(uint64(i+1), p.n)
					parts = append(parts, alignedCopy(d, p.skew))
					want = append(want, d...)
				}
				before := zeroCopyBytes.Load()
				if err := b.Put(context.Background(), "o/x", backend.NewBuffers(parts...), int64(len(want))); err != nil {
					t.Fatal(err)
				}
				// A shard's aligned data goes from the caller's memory.
				if name == "shard" && !fallback && directSupported(t, b.Root()) {
					if got := zeroCopyBytes.Load() - before; got != 3<<20 {
						t.Errorf("%d bytes written from the caller's memory, want the %d of the aligned data", got, 3<<20)
					}
				}
				if got := backendtest.Get(t, b, "o/x"); !bytes.Equal(got, want) {
					t.Fatalf("read back differs (%d bytes)", len(want))
				}
				// Off after the forced fallback, and on a file system that
				// refuses O_DIRECT anyway; on otherwise.
				if want := fallback || !directSupported(t, b.Root()); b.noDirect.Load() != want {
					t.Fatalf("noDirect = %v after a Put with fallback %v", b.noDirect.Load(), fallback)
				}
				// A declared size that disagrees fails, leaving nothing.
				for _, size := range []int64{int64(len(want)) - 1, int64(len(want)) + 1} {
					if err := b.Put(context.Background(), "o/bad", backend.NewBuffers(parts...), size); err == nil {
						t.Fatalf("Put of %d bytes declared as %d succeeded", len(want), size)
					}
				}
				assertNoTempFiles(t, b.Root())
			})
		}
	}
}
