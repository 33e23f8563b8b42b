package vdisk

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// writeSparse makes a file of size bytes with random data in the given
// extents (4 KiB aligned, so any block size up to 4 KiB maps them exactly)
// and holes elsewhere. It returns the expected content.
func writeSparse(t *testing.T, size int64, ext []Extent) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	rng := rand.New(rand.NewSource(1))
	for _, e := range ext {
		rng.Read(want[e.Off:e.End()])
		if _, err := f.WriteAt(want[e.Off:e.End()], e.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path, want
}

// TestRawSparse checks the extent map against the holes we punched (exactly
// on Linux, where SEEK_DATA is used; a covering superset elsewhere), that
// everything outside the map reads as zeros, that all bytes match, and the
// Identity/Size facts.
func TestRawSparse(t *testing.T) {
	const size = 10 << 20
	written := []Extent{
		{Off: 0, Len: 4096},
		{Off: 3 << 20, Len: 8192},
		{Off: 3<<20 + 8192, Len: 4096}, // adjacent: must merge
		{Off: 7 << 20, Len: 64 << 10},
		{Off: size - 4096, Len: 4096}, // data right at the end
	}
	path, want := writeSparse(t, size, written)
	d, err := OpenRaw(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	if d.Size() != size {
		t.Fatalf("Size = %d, want %d", d.Size(), size)
	}
	id := d.Identity()
	if id.Format != "raw" || id.VirtualSize != size || id.LogicalSectorSize != 512 ||
		id.PhysicalSectorSize != 512 || !id.DiskID.IsZero() {
		t.Fatalf("Identity = %+v", id)
	}

	got := d.Allocated()
	norm := NormalizeExtents(written, size)
	if runtime.GOOS == "linux" {
		if !equalExtents(got, norm) {
			t.Fatalf("Allocated = %v, want %v", got, norm)
		}
	}
	// Always: sorted, non-adjacent, and covering every written byte.
	for i, e := range got {
		if e.Len <= 0 || (i > 0 && e.Off <= got[i-1].End()) {
			t.Fatalf("Allocated not normalized: %v", got)
		}
	}
	for _, w := range norm {
		if !covered(got, w) {
			t.Fatalf("written %v not covered by %v", w, got)
		}
	}
	// Outside the map the disk must read as zeros.
	var prev int64
	for _, e := range append(got, Extent{Off: size}) {
		buf := make([]byte, e.Off-prev)
		if _, err := d.ReadAt(buf, prev); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, make([]byte, len(buf))) {
			t.Fatalf("non-zero bytes in hole [%d,%d)", prev, e.Off)
		}
		prev = e.End()
	}
	// Allocated hands out copies.
	got[0].Len = 1
	if d.Allocated()[0].Len == 1 {
		t.Fatal("Allocated returned internal slice")
	}

	// All bytes, read concurrently in odd-sized pieces (run with -race).
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			buf := make([]byte, 12345+g)
			for off := int64(g); off < size; off += int64(len(buf)) {
				n, err := d.ReadAt(buf, off)
				if err != nil && !(err == io.EOF && off+int64(n) == size) {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- errors.New("content mismatch")
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestRawEOF checks the io.ReaderAt contract at and past the end.
func TestRawEOF(t *testing.T) {
	path, want := writeSparse(t, 8192, []Extent{{Off: 0, Len: 8192}})
	d, err := OpenRaw(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 100)
	n, err := d.ReadAt(buf, 8192-40)
	if n != 40 || err != io.EOF || !bytes.Equal(buf[:40], want[8192-40:]) {
		t.Fatalf("straddling read: n=%d err=%v", n, err)
	}
	if n, err := d.ReadAt(buf, 8192); n != 0 || err != io.EOF {
		t.Fatalf("read at end: n=%d err=%v", n, err)
	}
	if n, err := d.ReadAt(buf, 1<<40); n != 0 || err != io.EOF {
		t.Fatalf("read far past end: n=%d err=%v", n, err)
	}
	if _, err := d.ReadAt(buf, -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	// Growth after open is invisible: the disk size was fixed at open.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("more"))
	f.Close()
	if n, err := d.ReadAt(buf, 8192); n != 0 || err != io.EOF {
		t.Fatalf("read after growth: n=%d err=%v", n, err)
	}
}

// TestRawEmptyAndHoleOnly: an empty file and an all-hole file have no
// extents on Linux and read as zeros.
func TestRawEmptyAndHoleOnly(t *testing.T) {
	path, _ := writeSparse(t, 0, nil)
	d, err := OpenRaw(path)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 0 || len(d.Allocated()) != 0 {
		t.Fatalf("empty: size %d ext %v", d.Size(), d.Allocated())
	}
	d.Close()

	path, _ = writeSparse(t, 1<<20, nil)
	d, err = OpenRaw(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if runtime.GOOS == "linux" && len(d.Allocated()) != 0 {
		t.Fatalf("hole-only file: ext %v", d.Allocated())
	}
	buf := make([]byte, 1<<20)
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatal("hole-only file not zero")
	}
}

// TestRawErrors: missing files and directories fail with a prefixed error.
func TestRawErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenRaw(filepath.Join(dir, "nope.raw")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := OpenRaw(dir); err == nil {
		t.Fatal("directory accepted")
	}
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func covered(ext []Extent, w Extent) bool {
	for _, e := range ext {
		if e.Off <= w.Off && w.End() <= e.End() {
			return true
		}
	}
	return false
}
