package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// rdtDataRanges are the non-zero parts of rdtMakeRaw's image: they start and
// end off block and sector boundaries on purpose.
var rdtDataRanges = []vdisk.Extent{
	{Off: 0, Len: 1*MiB + MiB/2},
	{Off: 5*MiB + 512, Len: 2*MiB - 512},
	{Off: 20*MiB - 100, Len: 3100},
	{Off: 33 * MiB, Len: 8 * MiB},
}

// rdtMakeRaw writes a sparse raw image of size bytes with random data in
// rdtDataRanges (clipped) and zeros elsewhere.
func rdtMakeRaw(t testing.TB, dir string, size int64, seed uint64) string {
	t.Helper()
	p := filepath.Join(dir, "src.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	for _, e := range vdisk.NormalizeExtents(append(rdtDataRanges, vdisk.Extent{Off: size - 4096, Len: 4096}), size) {
		b := make([]byte, e.Len)
		for i := range b {
			b[i] = byte(rng.Uint32() | 1) // never zero, so Allocated can be checked exactly
		}
		if _, err := f.WriteAt(b, e.Off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// rdtCheckAllocated verifies that everything outside Allocated reads as
// zeros in the raw oracle and that Allocated is normalized.
func rdtCheckAllocated(t testing.TB, d *Disk, raw []byte) {
	t.Helper()
	a := d.Allocated()
	if n := vdisk.NormalizeExtents(a, d.Size()); fmt.Sprint(n) != fmt.Sprint(a) {
		t.Errorf("Allocated not normalized: %v", a)
	}
	pos := int64(0)
	for _, e := range append(a, vdisk.Extent{Off: d.Size()}) {
		if bytes.IndexFunc(raw[pos:e.Off], func(r rune) bool { return r != 0 }) >= 0 {
			t.Errorf("non-zero data in [%d,%d) outside Allocated %v", pos, e.Off, a)
		}
		pos = e.End()
	}
}

// TestReaderQemuImages converts a raw image with qemu-img in several
// layouts and checks that the reader returns the raw bytes (compared with
// the source and with qemu-img's own conversion back to raw), and that
// Allocated leaves out the zero areas.
func TestReaderQemuImages(t *testing.T) {
	rdtNeedQemu(t)
	const size = 45*MiB + 512 // not a multiple of any block size
	dir := t.TempDir()
	src := rdtMakeRaw(t, dir, size, 1)
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	srcSHA := rdtFileSHA(t, src)
	cases := []struct {
		name, opts string
		bs         uint32
		fixed      bool
		maxAlloc   int64 // bytes Allocated may cover at most (0: no check)
	}{
		{"dynamic-1M", "subformat=dynamic,block_size=1M", 1 * MiB, false, 15*MiB + 512},
		{"dynamic-2M", "subformat=dynamic,block_size=2M", 2 * MiB, false, 21*MiB + 512},
		{"dynamic-32M", "subformat=dynamic,block_size=32M,log_size=4M", 32 * MiB, false, size},
		{"fixed-8M", "subformat=fixed,block_size=8M,block_state_zero=off", 8 * MiB, true, 0},
		{"fixed-zero-1M", "subformat=fixed,block_size=1M", 1 * MiB, true, 15*MiB + 512},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vhdx := filepath.Join(dir, c.name+".vhdx")
			rdtRun(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", c.opts, src, vhdx)
			back := filepath.Join(dir, c.name+".back.raw")
			rdtRun(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", vhdx, back)
			d := rdtOpen(t, vhdx)
			id := d.Identity()
			if id.VirtualSize != size || id.BlockSize != c.bs || id.Fixed != c.fixed || id.LogicalSectorSize != 512 || id.ChainLength != 1 {
				t.Errorf("identity %+v", id)
			}
			got := rdtSHA(t, d, d.Size())
			if got != srcSHA || got != rdtFileSHA(t, back) {
				t.Fatalf("content sha256 %s, source %s, qemu %s", got, srcSHA, rdtFileSHA(t, back))
			}
			rdtCheckAllocated(t, d, raw)
			if n := vdisk.AllocatedBytes(d.Allocated()); c.maxAlloc > 0 && n > c.maxAlloc {
				t.Errorf("Allocated covers %d bytes, want ≤ %d (zero blocks must be left out)", n, c.maxAlloc)
			}
			if c.name == "fixed-8M" && d.Info().BAT.Payload[PayloadFullyPresent] != PayloadBlocks(size, c.bs) {
				t.Errorf("fixed layout: %+v", d.Info().BAT)
			}
			// Random unaligned reads against the source.
			rng := rand.New(rand.NewPCG(2, 2))
			for range 200 {
				off := rng.Int64N(size)
				n := rng.Int64N(min(3*int64(c.bs), 5*MiB))
				buf := make([]byte, n)
				m, err := d.ReadAt(buf, off)
				want := raw[off:min(off+n, size)]
				if m != len(want) || !bytes.Equal(buf[:m], want) || (off+n > size) != (err != nil) {
					t.Fatalf("ReadAt(%d, %d) = %d, %v; mismatch", off, n, m, err)
				}
			}
		})
	}
}

// rdtQemuImage makes a small dynamic VHDX with qemu-img and returns its
// path and the source raw bytes.
func rdtQemuImage(t testing.TB, dir string) (string, []byte) {
	t.Helper()
	rdtNeedQemu(t)
	src := rdtMakeRaw(t, dir, 24*MiB, 3)
	p := filepath.Join(dir, "q.vhdx")
	rdtRun(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, p)
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	return p, raw
}

// rdtPatched writes a copy of file with edit applied and returns its bytes.
func rdtPatched(t testing.TB, file []byte, edit func(b []byte)) []byte {
	t.Helper()
	b := bytes.Clone(file)
	edit(b)
	return b
}

// rdtFixCRC recomputes the checksum at off+4 of the n-byte structure at off.
func rdtFixCRC(b []byte, off, n int) {
	binary.LittleEndian.PutUint32(b[off+4:], Checksum(b[off:off+n], 4))
}

// rdtOpenBytes opens an in-memory file.
func rdtOpenBytes(b []byte) (*Disk, error) {
	return OpenFile(bytes.NewReader(b), int64(len(b)), "mem.vhdx", Options{})
}

// TestReaderHeaderRegionFallback damages one copy of each redundant
// structure and checks the reader still returns identical bytes, and that
// damaging both copies gives an error naming the structure.
func TestReaderHeaderRegionFallback(t *testing.T) {
	p, raw := rdtQemuImage(t, t.TempDir())
	file, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := rdtSHA(t, bytes.NewReader(raw), int64(len(raw)))
	flip := func(offs ...int) func([]byte) {
		return func(b []byte) {
			for _, o := range offs {
				b[o] ^= 0x40
			}
		}
	}
	cases := []struct {
		name      string
		edit      func([]byte)
		wantErr   string // "" = must read the source bytes
		curHeader int
		regionTbl int
	}{
		{"intact", func([]byte) {}, "", 1, 1},
		{"header1-bad", flip(Header1Offset + 100), "", 1, 1},
		{"header2-bad", flip(Header2Offset + 100), "", 0, 1},
		{"header2-zeroed", func(b []byte) { clear(b[Header2Offset : Header2Offset+HeaderSize]) }, "", 0, 1},
		{"header2-version", func(b []byte) { b[Header2Offset+66] = 2; rdtFixCRC(b, Header2Offset, HeaderSize) }, "", 0, 1},
		{"both-headers", flip(Header1Offset+100, Header2Offset+100), "vhdx: header: no valid header (header 1: checksum mismatch; header 2: checksum mismatch)", 0, 0},
		{"both-headers-zeroed", func(b []byte) { clear(b[Header1Offset : Header2Offset+HeaderSize]) }, "vhdx: header: no valid header (header 1: bad signature", 0, 0},
		{"equal-seq-identical", func(b []byte) { copy(b[Header1Offset:Header1Offset+HeaderSize], b[Header2Offset:]) }, "", 0, 1},
		{"equal-seq-differ", func(b []byte) {
			binary.LittleEndian.PutUint64(b[Header1Offset+8:], binary.LittleEndian.Uint64(b[Header2Offset+8:]))
			rdtFixCRC(b, Header1Offset, HeaderSize)
		}, "vhdx: header: both headers have sequence number", 0, 0},
		{"region1-bad", flip(RegionTable1Off + 20), "", 1, 2},
		{"region1-zeroed", func(b []byte) { clear(b[RegionTable1Off : RegionTable1Off+RegionTableSize]) }, "", 1, 2},
		{"region2-bad", flip(RegionTable2Off + 20), "", 1, 1},
		{"both-regions", flip(RegionTable1Off+20, RegionTable2Off+20), "vhdx: region table: checksum mismatch", 0, 0},
		{"file-signature", flip(0), "vhdx: file: bad signature", 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := rdtOpenBytes(rdtPatched(t, file, c.edit))
			if c.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.wantErr) || !errors.Is(err, vdisk.ErrCorrupt) {
					t.Fatalf("err = %v, want prefix %q wrapping ErrCorrupt", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := rdtSHA(t, d, d.Size()); got != want {
				t.Errorf("content differs")
			}
			if i := d.Info(); i.CurrentHeader != c.curHeader || i.RegionTable != c.regionTbl {
				t.Errorf("current header %d, region table %d; want %d, %d", i.CurrentHeader, i.RegionTable, c.curHeader, c.regionTbl)
			}
		})
	}
}
