package vhdx

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// rdtPunch turns file range [off, off+n) of path into a host hole, skipping
// the test when the tool or the file system cannot.
func rdtPunch(t *testing.T, path string, off, n int64) {
	t.Helper()
	if _, err := exec.LookPath("fallocate"); err != nil {
		t.Skip("fallocate not installed")
	}
	out, err := exec.Command("fallocate", "--punch-hole", "--offset", strconv.FormatInt(off, 10),
		"--length", strconv.FormatInt(n, 10), path).CombinedOutput()
	if err != nil {
		t.Skipf("fallocate --punch-hole: %v: %s", err, out)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	ext, err := vdisk.FileDataExtents(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		if e.Off < off+n && off < e.End() {
			t.Skipf("file system reports no hole at [%d,%d) after punching: %v", off, off+n, ext)
		}
	}
}

// rdtOverlaps reports whether any extent of a overlaps [off, off+n).
func rdtOverlaps(a []vdisk.Extent, off, n int64) bool {
	for _, e := range a {
		if e.Off < off+n && off < e.End() {
			return true
		}
	}
	return false
}

// TestAllocatedHostHoles punches host holes into FULLY_PRESENT payload
// blocks of a qemu-made dynamic VHDX: Allocated must leave them out, every
// byte outside Allocated must read as zeros, and the content must equal
// qemu-img's own conversion of the punched file.
func TestAllocatedHostHoles(t *testing.T) {
	rdtNeedQemu(t)
	const size = 45*MiB + 512
	dir := t.TempDir()
	src := rdtMakeRaw(t, dir, size, 7)
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "h.vhdx")
	rdtRun(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", src, p)

	d := rdtOpen(t, p)
	before := d.Allocated() // qemu already leaves zero parts of blocks as holes
	l := d.layers[0]
	whole := rdtAllocatedReaderAt(t, p) // block granularity: no hole probe
	// Blocks 33..40 hold data (rdtDataRanges). Punch block 34 whole and the
	// second half of block 36.
	holes := []struct{ voff, n int64 }{{34 * MiB, MiB}, {36*MiB + MiB/2, MiB / 2}}
	var fileOff []int64
	for _, h := range holes {
		b := h.voff / MiB
		e := l.entry(b)
		if batState(e) != PayloadFullyPresent {
			t.Fatalf("block %d state %d, want FULLY_PRESENT", b, batState(e))
		}
		if !rdtOverlaps(before, h.voff, h.n) {
			t.Fatalf("block %d not in Allocated before punching: %v", b, before)
		}
		fileOff = append(fileOff, batOffset(e)+h.voff%MiB)
	}
	d.Close()
	for i, h := range holes {
		rdtPunch(t, p, fileOff[i], h.n)
		clear(raw[h.voff : h.voff+h.n])
	}

	d = rdtOpen(t, p)
	a := d.Allocated()
	for _, h := range holes {
		if rdtOverlaps(a, h.voff, h.n) {
			t.Errorf("Allocated %v covers host hole [%d,%d)", a, h.voff, h.voff+h.n)
		}
	}
	if got, want := vdisk.AllocatedBytes(a), vdisk.AllocatedBytes(before)-3*MiB/2; got != want {
		t.Errorf("Allocated covers %d bytes, want %d (%v)", got, want, a)
	}
	rdtCheckAllocated(t, d, raw)
	back := filepath.Join(dir, "h.back.raw")
	rdtRun(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", p, back)
	qemu, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, d.Size())
	if n, err := d.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatal(n, err)
	}
	if !bytes.Equal(got, raw) || !bytes.Equal(got, qemu) {
		t.Fatalf("content differs from expected (%v) or qemu-img (%v)", bytes.Equal(got, raw), bytes.Equal(got, qemu))
	}
	rdtCheckAllocated(t, d, qemu)

	// OpenFile with an *os.File probes too and keeps the caller's offset.
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if _, err := f.Seek(12345, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	df, err := OpenFile(f, st.Size(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(df.Allocated()) != fmt.Sprint(a) {
		t.Errorf("OpenFile(*os.File) Allocated %v, want %v", df.Allocated(), a)
	}
	if pos, _ := f.Seek(0, io.SeekCurrent); pos != 12345 {
		t.Errorf("file offset %d after OpenFile, want 12345", pos)
	}
	// Any other ReaderAt keeps counting present blocks whole.
	if g := rdtAllocatedReaderAt(t, p); fmt.Sprint(g) != fmt.Sprint(whole) {
		t.Errorf("OpenFile(ReaderAt) Allocated %v, want %v", g, whole)
	}
	if vdisk.AllocatedBytes(whole) <= vdisk.AllocatedBytes(a) {
		t.Errorf("hole probing saved nothing: %v vs %v", a, whole)
	}
}

// rdtAllocatedReaderAt opens path through a plain io.ReaderAt (no hole
// probing) and returns Allocated.
func rdtAllocatedReaderAt(t *testing.T, path string) []vdisk.Extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	d, err := OpenFile(struct{ io.ReaderAt }{f}, st.Size(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	return d.Allocated()
}

// TestAllocatedHostHolesChain checks the chain rule: a host hole in a
// child's FULLY_PRESENT block reads as zeros and hides the parent's data
// there, so both are left out of Allocated; a host hole in the parent under
// a NOT_PRESENT child block is left out too; PARTIALLY_PRESENT blocks count
// whole.
func TestAllocatedHostHolesChain(t *testing.T) {
	dir := t.TempDir()
	base := rdtSpec{vsize: 4 * MiB, dataWrite: rdtGUIDn(1), states: []uint8{6, 6, 6, 6}, seed: 1}
	top := rdtSpec{vsize: 4 * MiB, dataWrite: rdtGUIDn(2), seed: 2, present: func(s int64) bool { return s%2 == 0 },
		states:  []uint8{6, 0, 6, 7},
		locator: map[string]string{"parent_linkage": "{" + strings.ToUpper(rdtGUIDn(1).String()) + "}", "relative_path": `.\base.vhdx`}}
	bb, tb := rdtBuild(t, base), rdtBuild(t, top)
	bp, tp := filepath.Join(dir, "base.vhdx"), filepath.Join(dir, "top.avhdx")
	for path, b := range map[string][]byte{bp: bb, tp: tb} {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := rdtOpen(t, tp)
	if a := d.Allocated(); fmt.Sprint(a) != fmt.Sprint([]vdisk.Extent{{Off: 0, Len: 4 * MiB}}) {
		t.Fatalf("Allocated before punching %v", a)
	}
	tl, bl := d.layers[0], d.layers[1]
	d.Close()
	// top block 0 whole, top block 2 first half, top block 3 (partial) a
	// quarter, base block 1 first half.
	rdtPunch(t, tp, batOffset(tl.entry(0)), MiB)
	rdtPunch(t, tp, batOffset(tl.entry(2)), MiB/2)
	rdtPunch(t, tp, batOffset(tl.entry(3)), MiB/4)
	rdtPunch(t, bp, batOffset(bl.entry(1)), MiB/2)

	d = rdtOpen(t, tp)
	want := []vdisk.Extent{{Off: MiB + MiB/2, Len: MiB / 2}, {Off: 2*MiB + MiB/2, Len: MiB + MiB/2}}
	if a := d.Allocated(); fmt.Sprint(a) != fmt.Sprint(want) {
		t.Errorf("Allocated %v, want %v", a, want)
	}
	var layers []rdtLayerSpec
	for _, x := range []struct {
		s rdtSpec
		p string
	}{{top, tp}, {base, bp}} {
		b, err := os.ReadFile(x.p)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, rdtLayerSpec{x.s, b})
	}
	exp := rdtExpected(layers)
	got := make([]byte, d.Size())
	if n, err := d.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatal(n, err)
	}
	if !bytes.Equal(got, exp) {
		t.Fatal("chain content differs from the spec rules")
	}
	rdtCheckAllocated(t, d, exp)
	// The masked parent data really is non-zero: leaving the child's hole
	// in Allocated would have been harmless, but reading the parent there
	// would not.
	if bytes.Count(bb[batOffset(bl.entry(0)):][:MiB], []byte{0}) == MiB {
		t.Fatal("base block 0 unexpectedly zero")
	}
}
