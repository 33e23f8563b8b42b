package vdisk

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestDirectWriter: pieces of every alignment land where they were written
// (read back through the page cache, which the direct writes must not have
// left stale), and on Linux, where the file system takes O_DIRECT, the
// large aligned ones go direct and the others do not.
func TestDirectWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Cache some pages first: a direct write over them must invalidate them.
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 4<<20), 0); err != nil {
		t.Fatal(err)
	}
	w := NewDirectWriter(f)
	defer w.Close()
	supported := w.direct != nil
	if runtime.GOOS == "linux" && !supported {
		t.Logf("%s takes no O_DIRECT: every write is buffered", filepath.Dir(path))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := AlignedBuffer(8 << 20)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	// want is the file as it must read back: 4 MiB of 0xee, then zeros,
	// under the pieces.
	want := append(bytes.Repeat([]byte{0xee}, 4<<20), make([]byte, 8<<20)...)
	size := 4 << 20
	for _, c := range []struct {
		off, start, n int
		direct        bool
	}{
		{0, 0, 1 << 20, true},                 // aligned, over cached pages
		{1 << 20, 4096, 2 << 20, true},        // aligned memory at an offset
		{3<<20 + 4096, 1, 1 << 20, false},     // unaligned memory
		{5<<20 + 512, 0, 1 << 20, false},      // unaligned offset
		{7 << 20, 0, 1<<20 + 100, false},      // unaligned length
		{9 << 20, 0, DirectMin - 4096, false}, // too small
		{10 << 20, 8192, 2<<20 - 8192, true},  // aligned, ends short of 12 MiB
	} {
		p := buf[c.start : c.start+c.n]
		n, direct, err := w.WriteAt(p, int64(c.off))
		if err != nil || n != len(p) {
			t.Fatalf("write %d at %d: %d, %v", c.n, c.off, n, err)
		}
		if c.direct && !direct && w.refused.Load() {
			// Opened with O_DIRECT, but the writes are refused: the
			// fallback (buffered from here on) is the behaviour to check.
			t.Logf("%s refuses direct writes: buffered from here on", filepath.Dir(path))
			supported = false
		}
		if direct != (c.direct && supported) {
			t.Errorf("write %d bytes at %d (memory +%d): direct = %v", c.n, c.off, c.start, direct)
		}
		copy(want[c.off:], p)
		size = max(size, c.off+c.n)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != size {
		t.Fatalf("file has %d bytes, want %d", len(got), size)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("byte %d reads %#x, want %#x (a direct write left stale cached pages or went astray)", i, got[i], want[i])
		}
	}
	if a := AlignedBuffer(100); len(a) != 100 || cap(a) != 100 {
		t.Fatalf("AlignedBuffer(100): len %d cap %d", len(a), cap(a))
	}
}
