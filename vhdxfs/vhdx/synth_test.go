package vhdx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// ---------------------------------------------------------------------------
// Test sources

// synthPattern is a virtual disk of size bytes whose every 8-byte word is a
// hash of its offset: non-zero, cheap, and different everywhere, so a
// misplaced block cannot compare equal by accident.
type synthPattern struct{ size int64 }

func synthWord(o int64) uint64 {
	x := uint64(o/8) + 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31) | 1
}

func (s synthPattern) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > s.size-off {
		n = int(s.size - off)
	}
	var w [8]byte
	for i := 0; i < n; {
		o := off + int64(i)
		binary.LittleEndian.PutUint64(w[:], synthWord(o))
		i += copy(p[i:n], w[o%8:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// synthExpected is the guest-visible content the synthesized file must
// carry: the source inside the allocation, zeros elsewhere.
func synthExpected(src io.ReaderAt, alloc []vdisk.Extent, size int64) []byte {
	out := make([]byte, size)
	for _, e := range vdisk.NormalizeExtents(alloc, size) {
		if _, err := src.ReadAt(out[e.Off:e.End()], e.Off); err != nil && !errors.Is(err, io.EOF) {
			panic(err)
		}
	}
	return out
}

// synthFailing returns an error once more than limit bytes have been read.
type synthFailing struct {
	src   io.ReaderAt
	limit int64
	read  atomic.Int64
}

var errSynthInjected = errors.New("injected source failure")

func (f *synthFailing) ReadAt(p []byte, off int64) (int, error) {
	if f.read.Add(int64(len(p))) > f.limit {
		return 0, errSynthInjected
	}
	return f.src.ReadAt(p, off)
}

func synthMustNew(t testing.TB, id vdisk.Identity, src io.ReaderAt, alloc []vdisk.Extent, opts SynthOptions) *Synth {
	t.Helper()
	s, err := NewSynth(id, src, alloc, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ---------------------------------------------------------------------------
// An independent little VHDX decoder for tests that run without tools. It
// shares no code with synth.go except the GUID constants: its own CRC-32C,
// its own BAT index math.

type synthParsed struct {
	seq            [2]uint64
	fileWrite      vdisk.GUID
	dataWrite      vdisk.GUID
	batOff, batLen int64
	metaOff        int64
	blockSize      int64
	virtualSize    int64
	diskID         vdisk.GUID
	lss, pss       int64
	creator        string
	bat            []uint64
}

var synthTestCRC = crc32.MakeTable(crc32.Castagnoli)

func synthTestCRCOK(b []byte, at int) bool {
	c := make([]byte, len(b))
	copy(c, b)
	want := binary.LittleEndian.Uint32(c[at:])
	binary.LittleEndian.PutUint32(c[at:], 0)
	return crc32.Checksum(c, synthTestCRC) == want
}

// synthReadRange reads [off, off+n) of r or fails the test.
func synthReadRange(t testing.TB, r io.ReaderAt, off, n int64) []byte {
	t.Helper()
	b := bytes.Repeat([]byte{0xA5}, int(n)) // garbage: every byte must be written
	if m, err := r.ReadAt(b, off); int64(m) != n {
		t.Fatalf("read %d bytes at %d: got %d, %v", n, off, m, err)
	}
	return b
}

func synthParse(t testing.TB, r io.ReaderAt) synthParsed {
	t.Helper()
	le := binary.LittleEndian
	var p synthParsed
	f := synthReadRange(t, r, 0, 2<<20) // header section and log
	if string(f[:8]) != "vhdxfile" {
		t.Fatalf("file signature %q", f[:8])
	}
	var cu []uint16
	for i := 8; i < 8+512; i += 2 {
		u := le.Uint16(f[i:])
		if u == 0 {
			break
		}
		cu = append(cu, u)
	}
	p.creator = string(utf16Decode(cu))
	for i, off := range []int{0x10000, 0x20000} {
		h := f[off : off+4096]
		if string(h[:4]) != "head" || !synthTestCRCOK(h, 4) {
			t.Fatalf("header %d: bad signature or CRC", i+1)
		}
		p.seq[i] = le.Uint64(h[8:])
		fw, dw := vdisk.GUIDFromMixed(h[16:32]), vdisk.GUIDFromMixed(h[32:48])
		if i == 1 && (fw != p.fileWrite || dw != p.dataWrite) {
			t.Fatalf("headers disagree on GUIDs")
		}
		p.fileWrite, p.dataWrite = fw, dw
		if !vdisk.GUIDFromMixed(h[48:64]).IsZero() {
			t.Fatalf("LogGuid not zero")
		}
		if le.Uint16(h[64:]) != 0 || le.Uint16(h[66:]) != 1 || le.Uint32(h[68:]) != 1<<20 || le.Uint64(h[72:]) != 1<<20 {
			t.Fatalf("header %d: log/version fields % x", i+1, h[64:80])
		}
		if !bytes.Equal(h[80:], make([]byte, 4096-80)) {
			t.Fatalf("header %d: reserved bytes not zero", i+1)
		}
	}
	rt := f[0x30000:0x40000]
	if !bytes.Equal(rt, f[0x40000:0x50000]) {
		t.Fatalf("region tables differ")
	}
	if string(rt[:4]) != "regi" || !synthTestCRCOK(rt, 4) || le.Uint32(rt[8:]) != 2 {
		t.Fatalf("region table: bad signature, CRC or count")
	}
	for i := 0; i < 2; i++ {
		e := rt[16+32*i:]
		g := vdisk.GUIDFromMixed(e[:16])
		off, ln := int64(le.Uint64(e[16:])), int64(le.Uint32(e[24:]))
		if off%(1<<20) != 0 || ln%(1<<20) != 0 || off < 1<<20 {
			t.Fatalf("region %v at %d len %d not 1 MiB aligned", g, off, ln)
		}
		switch g {
		case RegionBAT:
			p.batOff, p.batLen = off, ln
		case RegionMetadata:
			p.metaOff = off
			if ln != 1<<20 {
				t.Fatalf("metadata region length %d", ln)
			}
		default:
			t.Fatalf("unknown region %v", g)
		}
	}
	if !bytes.Equal(f[0x50000:0x200000], make([]byte, 0x200000-0x50000)) {
		t.Fatalf("reserved header area or log not zero")
	}
	m := synthReadRange(t, r, p.metaOff, 1<<20)
	if string(m[:8]) != "metadata" || le.Uint16(m[10:]) != 5 {
		t.Fatalf("metadata table header % x", m[:32])
	}
	seen := map[vdisk.GUID]bool{}
	for i := 0; i < 5; i++ {
		e := m[32+32*i:]
		g := vdisk.GUIDFromMixed(e[:16])
		off, ln, flags := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:])), le.Uint32(e[24:])
		if off < 64<<10 {
			t.Fatalf("item %v at %d", g, off)
		}
		it := m[off : off+ln]
		wantFlags := uint32(6)
		switch g {
		case MetaFileParameters:
			wantFlags = 4
			p.blockSize = int64(le.Uint32(it))
			if le.Uint32(it[4:]) != 0 {
				t.Fatalf("file parameter flags %#x", le.Uint32(it[4:]))
			}
		case MetaVirtualSize:
			p.virtualSize = int64(le.Uint64(it))
		case MetaDiskID:
			p.diskID = vdisk.GUIDFromMixed(it)
		case MetaLogicalSector:
			p.lss = int64(le.Uint32(it))
		case MetaPhysicalSector:
			p.pss = int64(le.Uint32(it))
		default:
			t.Fatalf("unexpected item %v", g)
		}
		if flags != wantFlags {
			t.Fatalf("item %v flags %#x want %#x", g, flags, wantFlags)
		}
		seen[g] = true
	}
	if len(seen) != 5 {
		t.Fatalf("duplicate metadata items")
	}
	nb := (p.virtualSize + p.blockSize - 1) / p.blockSize
	cr := (int64(1) << 23) * p.lss / p.blockSize
	entries := nb + (nb-1)/cr
	if entries*8 > p.batLen {
		t.Fatalf("BAT region %d too small for %d entries", p.batLen, entries)
	}
	bat := synthReadRange(t, r, p.batOff, p.batLen)
	for i := int64(0); i < entries; i++ {
		p.bat = append(p.bat, le.Uint64(bat[8*i:]))
	}
	if !bytes.Equal(bat[8*entries:], make([]byte, p.batLen-8*entries)) {
		t.Fatalf("BAT tail not zero")
	}
	return p
}

func utf16Decode(cu []uint16) []rune {
	var r []rune
	for _, u := range cu {
		r = append(r, rune(u)) // creator strings in tests are BMP-only
	}
	return r
}

// synthVerify checks every BAT entry of a parsed file of fileSize bytes and
// that the guest-visible bytes it describes equal src inside alloc and zero
// elsewhere (origSize is the source's size before any sector rounding). It
// returns the number of stored blocks. Blocks are compared in 4 MiB pieces
// so that huge block sizes cost little memory.
func synthVerify(t testing.TB, r io.ReaderAt, fileSize int64, p synthParsed, src io.ReaderAt, alloc []vdisk.Extent, origSize int64) int64 {
	t.Helper()
	nb := (p.virtualSize + p.blockSize - 1) / p.blockSize
	cr := (int64(1) << 23) * p.lss / p.blockSize
	norm := vdisk.NormalizeExtents(alloc, origSize)
	intersects := func(a, b int64) bool {
		for _, e := range norm {
			if e.Off < b && e.End() > a {
				return true
			}
		}
		return false
	}
	used := map[int64]bool{}
	var i, stored, lastOff int64
	for b := int64(0); b < nb; b++ {
		if b > 0 && b%cr == 0 {
			if p.bat[i] != 0 {
				t.Fatalf("SB entry %d = %#x", i, p.bat[i])
			}
			i++
		}
		e := p.bat[i]
		i++
		state, off := e&7, int64(e&^0xFFFFF)
		if e&0xFFFF8 != 0 {
			t.Fatalf("block %d: reserved bits in %#x", b, e)
		}
		lo, hi := b*p.blockSize, (b+1)*p.blockSize
		switch state {
		case 0:
			if off != 0 {
				t.Fatalf("block %d: NOT_PRESENT with offset", b)
			}
			if intersects(lo, hi) {
				t.Fatalf("block %d holds allocated data but is NOT_PRESENT", b)
			}
		case 6:
			if off < p.metaOff+1<<20 || off+p.blockSize > fileSize || used[off] || off <= lastOff {
				t.Fatalf("block %d: bad payload offset %d (file %d)", b, off, fileSize)
			}
			if !intersects(lo, hi) {
				t.Fatalf("block %d stored but holds no allocated data", b)
			}
			used[off], lastOff = true, off
			stored++
			for x := int64(0); x < p.blockSize; x += 4 << 20 {
				n := min(4<<20, p.blockSize-x)
				got := synthReadRange(t, r, off+x, n)
				want := make([]byte, n)
				for _, ex := range norm {
					a, z := max(ex.Off, lo+x), min(ex.End(), lo+x+n)
					if a < z {
						if _, err := src.ReadAt(want[a-lo-x:z-lo-x], a); err != nil && !errors.Is(err, io.EOF) {
							t.Fatal(err)
						}
					}
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("block %d (+%d): content differs from the source", b, x)
				}
			}
		default:
			t.Fatalf("block %d: state %d", b, state)
		}
	}
	if i != int64(len(p.bat)) {
		t.Fatalf("decoded %d entries of %d", i, len(p.bat))
	}
	if want := p.metaOff + 1<<20 + stored*p.blockSize; fileSize != want {
		t.Fatalf("file size %d, want %d for %d stored blocks", fileSize, want, stored)
	}
	return stored
}

// ---------------------------------------------------------------------------
// Pure offset functions, by table.

func TestSynthLayoutTable(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		size                 int64
		bs, lss              uint32
		alloc                int64
		cr, entries, batLen  int64
		meta, payload, total int64
	}{
		// 10 GiB, 1 MiB blocks: the VERIFIED qemu numbers (10242 entries).
		{"10G-1M", 10 << 30, 1 << 20, 512, 3, 4096, 10242, 1 << 20, 3 << 20, 4 << 20, 7 << 20},
		{"100M+512-2M", 100<<20 + 512, 2 << 20, 512, 51, 2048, 51, 1 << 20, 3 << 20, 4 << 20, 4<<20 + 51*2<<20},
		{"128M-32M", 128 << 20, 32 << 20, 512, 0, 128, 4, 1 << 20, 3 << 20, 4 << 20, 4 << 20},
		{"lss4096-1M", 10 << 30, 1 << 20, 4096, 1, 32768, 10240, 1 << 20, 3 << 20, 4 << 20, 5 << 20},
		// 64 TiB at 1 MiB: 64 Mi blocks + 16383 SB entries -> 513 MiB of BAT.
		{"64T-1M", 64 << 40, 1 << 20, 512, 0, 4096, 64<<20 + 16383, 513 << 20, 515 << 20, 516 << 20, 516 << 20},
		{"one-sector", 512, 256 << 20, 512, 1, 16, 1, 1 << 20, 3 << 20, 4 << 20, 260 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := synthNewLayout(tc.size, tc.bs, tc.lss, tc.alloc)
			got := []int64{l.chunkRatio, l.batEntries, l.batLength, l.metaOffset, l.payloadOffset, l.size}
			want := []int64{tc.cr, tc.entries, tc.batLen, tc.meta, tc.payload, tc.total}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("cr,entries,batLen,meta,payload,size = %v, want %v", got, want)
			}
		})
	}
}

func TestSynthRegionTable(t *testing.T) {
	l := synthNewLayout(10<<30, 1<<20, 512, 3) // BAT 2-3 MiB, meta 3-4 MiB, payload 4-7 MiB
	for _, tc := range []struct {
		off  int64
		want synthRegion
		end  int64
	}{
		{0, synthRegHeader, 1 << 20},
		{0x10000, synthRegHeader, 1 << 20},
		{1<<20 - 1, synthRegHeader, 1 << 20},
		{1 << 20, synthRegLog, 2 << 20},
		{2<<20 - 1, synthRegLog, 2 << 20},
		{2 << 20, synthRegBAT, 3 << 20},
		{3<<20 - 1, synthRegBAT, 3 << 20},
		{3 << 20, synthRegMetadata, 4 << 20},
		{4<<20 - 1, synthRegMetadata, 4 << 20},
		{4 << 20, synthRegPayload, 7 << 20},
		{7<<20 - 1, synthRegPayload, 7 << 20},
		{7 << 20, synthRegEOF, 7 << 20},
		{1 << 40, synthRegEOF, 1 << 40},
	} {
		r, end := l.region(tc.off)
		if r != tc.want || end != tc.end {
			t.Errorf("region(%#x) = %v,%#x want %v,%#x", tc.off, r, end, tc.want, tc.end)
		}
	}
}

func TestSynthSourceOffsetTable(t *testing.T) {
	const bs = 2 << 20
	// Extents: block 0 (partly), blocks 5-6 (one extent crossing the
	// boundary), block 6 again (merged), block 40 (last bytes of the disk).
	ext := vdisk.NormalizeExtents([]vdisk.Extent{
		{Off: 100, Len: 10},
		{Off: 5*bs + 7, Len: bs},
		{Off: 6*bs + 100, Len: 1},
		{Off: 40*bs + 4096, Len: 512},
	}, 40*bs+4608)
	runs := synthBuildRuns(ext, bs)
	wantRuns := []synthRun{{0, 1, 0}, {5, 2, 1}, {40, 1, 3}}
	if fmt.Sprint(runs) != fmt.Sprint(wantRuns) {
		t.Fatalf("runs %v want %v", runs, wantRuns)
	}
	l := synthNewLayout(40*bs+4608, bs, 512, 4)
	D := l.payloadOffset
	if D != 4<<20 {
		t.Fatalf("payload offset %d", D)
	}
	for _, tc := range []struct {
		off        int64
		disk, left int64
		ok         bool
	}{
		{D - 1, 0, 0, false},
		{D, 0, bs, true},
		{D + 100, 100, bs - 100, true},
		{D + bs, 5 * bs, bs, true},
		{D + 2*bs - 1, 6*bs - 1, 1, true},
		{D + 2*bs, 6 * bs, bs, true},
		{D + 3*bs + 4096, 40*bs + 4096, bs - 4096, true},
		{D + 4*bs - 1, 41*bs - 1, 1, true},
		{D + 4*bs, 0, 0, false},
	} {
		disk, left, ok := synthSourceOffset(l, runs, tc.off)
		if disk != tc.disk || left != tc.left || ok != tc.ok {
			t.Errorf("synthSourceOffset(D%+d) = %d,%d,%v want %d,%d,%v", tc.off-D, disk, left, ok, tc.disk, tc.left, tc.ok)
		}
	}
}

func TestSynthBlockSizeChoice(t *testing.T) {
	src := synthPattern{1 << 30}
	for _, tc := range []struct {
		idBS, optBS, want uint32
	}{
		{0, 0, SynthDefaultBlockSize},
		{32 << 20, 0, 32 << 20},
		{3 << 20, 0, SynthDefaultBlockSize}, // not a power of two: ignored
		{512 << 20, 0, SynthDefaultBlockSize},
		{32 << 20, 1 << 20, 1 << 20}, // option wins
		{0, 256 << 20, 256 << 20},
	} {
		s := synthMustNew(t, vdisk.Identity{VirtualSize: 1 << 30, BlockSize: tc.idBS}, src, nil, SynthOptions{BlockSize: tc.optBS})
		if got := s.Identity().BlockSize; got != tc.want {
			t.Errorf("identity %d option %d: block size %d want %d", tc.idBS, tc.optBS, got, tc.want)
		}
	}
}

func TestSynthValidation(t *testing.T) {
	src := synthPattern{1 << 30}
	ok := vdisk.Identity{VirtualSize: 1 << 30}
	for _, tc := range []struct {
		name  string
		id    vdisk.Identity
		src   io.ReaderAt
		alloc []vdisk.Extent
		opts  SynthOptions
	}{
		{"nil source", ok, nil, nil, SynthOptions{}},
		{"zero size", vdisk.Identity{}, src, nil, SynthOptions{}},
		{"negative size", vdisk.Identity{VirtualSize: -512}, src, nil, SynthOptions{}},
		{"over 64 TiB", vdisk.Identity{VirtualSize: 64<<40 + 512}, src, nil, SynthOptions{}},
		{"lss 1024", vdisk.Identity{VirtualSize: 1 << 30, LogicalSectorSize: 1024}, src, nil, SynthOptions{}},
		{"pss 8192", vdisk.Identity{VirtualSize: 1 << 30, PhysicalSectorSize: 8192}, src, nil, SynthOptions{}},
		{"block option 3 MiB", ok, src, nil, SynthOptions{BlockSize: 3 << 20}},
		{"block option 512 KiB", ok, src, nil, SynthOptions{BlockSize: 512 << 10}},
		{"block option 512 MiB", ok, src, nil, SynthOptions{BlockSize: 512 << 20}},
		{"negative extent", ok, src, []vdisk.Extent{{Off: 0, Len: -1}}, SynthOptions{}},
		{"overflowing extent", ok, src, []vdisk.Extent{{Off: 1 << 62, Len: 1 << 62}}, SynthOptions{}},
		{"long creator", ok, src, nil, SynthOptions{Creator: strings.Repeat("x", 257)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSynth(tc.id, tc.src, tc.alloc, tc.opts)
			if err == nil {
				t.Fatalf("NewSynth accepted it (size %d)", s.Size())
			}
			if !strings.HasPrefix(err.Error(), "vhdx: ") {
				t.Fatalf("error without prefix: %v", err)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Structure and content, checked with the independent decoder.

func TestSynthStructureAndContent(t *testing.T) {
	dw := vdisk.GUID{0x28, 0xe0, 0x9a, 0xe1, 0xab, 0x94, 0x48, 0x15, 0xa1, 0x55, 0xf1, 0x43, 0xe2, 0xd0, 0x0a, 0x3f}
	did := vdisk.GUID{0x78, 0x80, 0x15, 0xf0, 0x5e, 0x93, 0x4b, 0xd2, 0xa5, 0xde, 0xb0, 0xcd, 0x84, 0x59, 0xdb, 0x11}
	for _, tc := range []struct {
		name  string
		id    vdisk.Identity
		opts  SynthOptions
		alloc []vdisk.Extent
	}{
		{"partial-last-block", vdisk.Identity{VirtualSize: 9<<20 + 512, DiskID: did, DataWriteGUID: dw}, SynthOptions{},
			[]vdisk.Extent{{Off: 0, Len: 4096}, {Off: 2<<20 - 1, Len: 2}, {Off: 9 << 20, Len: 512}}},
		{"unrounded-size", vdisk.Identity{VirtualSize: 3<<20 + 100}, SynthOptions{Creator: "tést"},
			[]vdisk.Extent{{Off: 3<<20 + 50, Len: 1000}}},
		// 256 MiB blocks with 512-byte sectors: chunk ratio 16, so a 6 GiB
		// disk has SB entries at indexes 16 (and none after the last chunk).
		{"sb-entries", vdisk.Identity{VirtualSize: 6 << 30, PhysicalSectorSize: 4096}, SynthOptions{BlockSize: 256 << 20},
			[]vdisk.Extent{{Off: 15 << 28, Len: 1}, {Off: 16 << 28, Len: 1}, {Off: 23<<28 + 5, Len: 9}}},
		{"lss4096", vdisk.Identity{VirtualSize: 5 << 20, LogicalSectorSize: 4096, PhysicalSectorSize: 4096}, SynthOptions{BlockSize: 1 << 20},
			[]vdisk.Extent{{Off: 1 << 20, Len: 3 << 20}}},
		{"empty-alloc", vdisk.Identity{VirtualSize: 7 << 20}, SynthOptions{}, nil},
		{"full-alloc-unsorted", vdisk.Identity{VirtualSize: 8 << 20}, SynthOptions{BlockSize: 1 << 20},
			[]vdisk.Extent{{Off: 4 << 20, Len: 4 << 20}, {Off: 0, Len: 5 << 20}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := synthPattern{tc.id.VirtualSize}
			s := synthMustNew(t, tc.id, src, tc.alloc, tc.opts)
			p := synthParse(t, s)
			eff := s.Identity()
			lss := int64(max(tc.id.LogicalSectorSize, 512))
			wantSize := (tc.id.VirtualSize + lss - 1) / lss * lss
			if p.virtualSize != wantSize || eff.VirtualSize != wantSize {
				t.Fatalf("virtual size %d (identity %d) want %d", p.virtualSize, eff.VirtualSize, wantSize)
			}
			if p.lss != lss || p.pss != int64(max(tc.id.PhysicalSectorSize, uint32(lss))) {
				t.Fatalf("sector sizes %d/%d", p.lss, p.pss)
			}
			if p.blockSize != int64(eff.BlockSize) {
				t.Fatalf("block size %d vs identity %d", p.blockSize, eff.BlockSize)
			}
			if p.seq != [2]uint64{1, 2} {
				t.Fatalf("sequence numbers %v", p.seq)
			}
			if !tc.id.DataWriteGUID.IsZero() && p.dataWrite != tc.id.DataWriteGUID {
				t.Fatalf("DataWriteGuid %v not preserved (%v)", p.dataWrite, tc.id.DataWriteGUID)
			}
			if !tc.id.DiskID.IsZero() && p.diskID != tc.id.DiskID {
				t.Fatalf("disk ID %v not preserved", p.diskID)
			}
			if p.dataWrite.IsZero() || p.diskID.IsZero() || p.fileWrite.IsZero() || p.fileWrite == p.dataWrite {
				t.Fatalf("GUIDs: file %v data %v disk %v", p.fileWrite, p.dataWrite, p.diskID)
			}
			if p.dataWrite != eff.DataWriteGUID || p.diskID != eff.DiskID {
				t.Fatalf("Identity() disagrees with the file")
			}
			wantCreator := tc.opts.Creator
			if wantCreator == "" {
				wantCreator = "vmvault"
			}
			if p.creator != wantCreator {
				t.Fatalf("creator %q", p.creator)
			}
			nAlloc := synthVerify(t, s, s.Size(), p, src, tc.alloc, tc.id.VirtualSize)
			if nAlloc == 0 && len(tc.alloc) > 0 {
				t.Fatalf("nothing stored")
			}
			var mapped int64
			for _, r := range s.PayloadMap() {
				mapped += r.Blocks
			}
			if mapped != nAlloc {
				t.Fatalf("PayloadMap covers %d blocks, want %d", mapped, nAlloc)
			}
		})
	}
}

// The BAT is computed on the fly, so check reads at every alignment.
func TestSynthBATPieces(t *testing.T) {
	id := vdisk.Identity{VirtualSize: 6 << 30}
	alloc := []vdisk.Extent{{Off: 0, Len: 1}, {Off: 15 << 28, Len: 2 << 28}, {Off: 23 << 28, Len: 1}}
	s := synthMustNew(t, id, synthPattern{6 << 30}, alloc, SynthOptions{BlockSize: 256 << 20})
	bat := synthReadRange(t, s, 2<<20, 256)
	for off := 0; off < len(bat); off++ {
		for _, n := range []int{1, 3, 7, 8, 9, 17, 64} {
			if off+n > len(bat) {
				continue
			}
			p := bytes.Repeat([]byte{0xA5}, n)
			if _, err := s.ReadAt(p, int64(2<<20+off)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, bat[off:off+n]) {
				t.Fatalf("BAT bytes [%d,+%d) = % x want % x", off, n, p, bat[off:off+n])
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Determinism

func synthDeterminismInput() (vdisk.Identity, io.ReaderAt, []vdisk.Extent) {
	id := vdisk.Identity{VirtualSize: 100<<20 + 512, LogicalSectorSize: 512, PhysicalSectorSize: 4096}
	alloc := []vdisk.Extent{{Off: 0, Len: 1 << 20}, {Off: 33<<20 + 5, Len: 3 << 20}, {Off: 100 << 20, Len: 512}}
	return id, synthPattern{id.VirtualSize}, alloc
}

func synthSum(t testing.TB, r io.ReaderAt, size int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestSynthHelperProcess prints the hash of the determinism input when run
// as a child of TestSynthDeterminism.
func TestSynthHelperProcess(t *testing.T) {
	if os.Getenv("VMVAULT_SYNTH_HELPER") != "1" {
		t.Skip("helper for TestSynthDeterminism")
	}
	id, src, alloc := synthDeterminismInput()
	s := synthMustNew(t, id, src, alloc, SynthOptions{})
	fmt.Printf("SUM=%s\n", synthSum(t, s, s.Size()))
}

func TestSynthDeterminism(t *testing.T) {
	id, src, alloc := synthDeterminismInput()
	a := synthMustNew(t, id, src, alloc, SynthOptions{})
	b := synthMustNew(t, id, src, append([]vdisk.Extent(nil), alloc...), SynthOptions{})
	sa, sb := synthSum(t, a, a.Size()), synthSum(t, b, b.Size())
	if sa != sb {
		t.Fatalf("two syntheses differ: %s vs %s", sa, sb)
	}
	// Another process must produce the same bytes too (no randomness,
	// no time, no map order).
	cmd := exec.Command(os.Args[0], "-test.run=^TestSynthHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VMVAULT_SYNTH_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUM="+sa) {
		t.Fatalf("other process gave different bytes: %s, want %s", out, sa)
	}
	// A different allocation must give a different FileWriteGuid (and
	// the same DataWriteGuid/DiskID, which are preserved or derived).
	c := synthMustNew(t, id, src, alloc[:2], SynthOptions{})
	pa, pc := synthParse(t, a), synthParse(t, c)
	if pa.fileWrite == pc.fileWrite {
		t.Fatalf("FileWriteGuid ignores the allocation")
	}
}

// ReadAt at odd offsets and lengths, from many goroutines at once, equals
// the same range of the WriteFile output.
func TestSynthReadAtMatchesWriteFile(t *testing.T) {
	id, src, alloc := synthDeterminismInput()
	s := synthMustNew(t, id, src, alloc, SynthOptions{BlockSize: 1 << 20})
	path := filepath.Join(t.TempDir(), "out.vhdx")
	if err := s.WriteFile(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(f)) != s.Size() {
		t.Fatalf("file is %d bytes, Size() %d", len(f), s.Size())
	}
	l := s.lay
	bounds := []int64{0, 8, 0x10000, 0x20000, 0x30000, 0x40000, 1 << 20, 2 << 20, l.metaOffset,
		l.metaOffset + 64<<10, l.payloadOffset, l.payloadOffset + 1<<20, l.size}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			for range 150 {
				b := bounds[rng.IntN(len(bounds))]
				off := b + rng.Int64N(20001) - 10000
				off = min(max(off, 0), l.size)
				n := rng.IntN(3<<20) + 1
				if rng.IntN(2) == 0 {
					n = rng.IntN(5000) + 1
				}
				p := bytes.Repeat([]byte{0x5A}, n)
				got, err := s.ReadAt(p, off)
				want := min(int64(n), l.size-off)
				if int64(got) != want || (want < int64(n)) != (err == io.EOF) || (err != nil && err != io.EOF) {
					errc <- fmt.Errorf("ReadAt(%d bytes at %d) = %d, %v (want %d)", n, off, got, err, want)
					return
				}
				if !bytes.Equal(p[:got], f[off:off+int64(got)]) {
					errc <- fmt.Errorf("ReadAt(%d bytes at %d) differs from the file", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	if n, err := s.ReadAt(make([]byte, 1), l.size); n != 0 || err != io.EOF {
		t.Fatalf("read at EOF: %d, %v", n, err)
	}
	// The io.WriterTo path gives the same bytes again.
	var buf bytes.Buffer
	if n, err := s.WriteTo(&buf); err != nil || n != s.Size() || !bytes.Equal(buf.Bytes(), f) {
		t.Fatalf("WriteTo: n=%d err=%v equal=%v", n, err, bytes.Equal(buf.Bytes(), f))
	}
}

// ---------------------------------------------------------------------------
// Errors: short sources, failures midway, cancellation.

func synthDirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestSynthShortSource(t *testing.T) {
	// The allocation claims data up to 8 MiB but the source ends at 6 MiB.
	id := vdisk.Identity{VirtualSize: 8 << 20}
	s := synthMustNew(t, id, synthPattern{6 << 20}, []vdisk.Extent{{Off: 0, Len: 8 << 20}}, SynthOptions{})
	p := make([]byte, 1<<20)
	_, err := s.ReadAt(p, s.lay.payloadOffset+5<<20+512<<10)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.HasPrefix(err.Error(), "vhdx: ") {
		t.Fatalf("short source read gave %v, want io.ErrUnexpectedEOF", err)
	}
	dir := t.TempDir()
	err = s.WriteFile(context.Background(), filepath.Join(dir, "short.vhdx"))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("WriteFile: %v", err)
	}
	if names := synthDirEntries(t, dir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
}

func TestSynthWriteFileCrashSafety(t *testing.T) {
	id := vdisk.Identity{VirtualSize: 64 << 20}
	alloc := []vdisk.Extent{{Off: 0, Len: 64 << 20}}
	for _, limit := range []int64{0, 5 << 20, 40 << 20} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "disk.vhdx")
			src := &synthFailing{src: synthPattern{64 << 20}, limit: limit}
			err := WriteFile(context.Background(), path, id, src, alloc, SynthOptions{})
			if !errors.Is(err, errSynthInjected) {
				t.Fatalf("WriteFile: %v, want the injected error", err)
			}
			if names := synthDirEntries(t, dir); len(names) != 0 {
				t.Fatalf("left behind: %v", names)
			}
			// An existing file under the final name survives a failure.
			if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			src = &synthFailing{src: synthPattern{64 << 20}, limit: limit}
			if err := WriteFile(context.Background(), path, id, src, alloc, SynthOptions{}); err == nil {
				t.Fatal("second WriteFile succeeded")
			}
			if b, _ := os.ReadFile(path); string(b) != "old" {
				t.Fatalf("existing file clobbered: %q", b)
			}
			if names := synthDirEntries(t, dir); len(names) != 1 {
				t.Fatalf("left behind: %v", names)
			}
		})
	}
}

func TestSynthWriteFileCancelAndProgress(t *testing.T) {
	id := vdisk.Identity{VirtualSize: 64 << 20}
	alloc := []vdisk.Extent{{Off: 0, Len: 64 << 20}}
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.vhdx")

	ctx, cancel := context.WithCancel(context.Background())
	var calls int
	opts := SynthOptions{Progress: func(n int64) {
		if calls++; calls == 2 {
			cancel()
		}
	}}
	err := WriteFile(ctx, path, id, synthPattern{64 << 20}, alloc, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled WriteFile: %v", err)
	}
	if names := synthDirEntries(t, dir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}

	var seen []int64
	opts = SynthOptions{Progress: func(n int64) { seen = append(seen, n) }}
	if err := WriteFile(context.Background(), path, id, synthPattern{64 << 20}, alloc, opts); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) < 2 || seen[len(seen)-1] != st.Size() {
		t.Fatalf("progress %v, file size %d", seen, st.Size())
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("progress not increasing: %v", seen)
		}
	}
	if st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v", st.Mode())
	}
}

// A 64 TiB disk costs memory in proportion to its allocation, not its size:
// the BAT is never materialized.
func TestSynthHuge(t *testing.T) {
	const size = 64 << 40
	alloc := []vdisk.Extent{{Off: 0, Len: 512}, {Off: 1 << 40, Len: 3 << 20}, {Off: size - 512, Len: 512}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := synthMustNew(t, vdisk.Identity{VirtualSize: size}, synthPattern{size}, alloc, SynthOptions{BlockSize: 1 << 20})
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("NewSynth allocated %d bytes for a 64 TiB disk", n)
	}
	l := s.lay
	if l.batLength != 513<<20 || l.size != l.payloadOffset+5<<20 {
		t.Fatalf("layout %+v", l)
	}
	// The BAT entries of the stored blocks, read one by one.
	cr := l.chunkRatio
	for k, b := range []int64{0, 1 << 20, 1<<20 + 1, 1<<20 + 2, size>>20 - 1} {
		e := synthReadRange(t, s, 2<<20+8*(b+b/cr), 8)
		want := uint64(l.payloadOffset+int64(k)<<20) | PayloadFullyPresent
		if got := binary.LittleEndian.Uint64(e); got != want {
			t.Fatalf("BAT entry of block %d = %#x want %#x", b, got, want)
		}
	}
	// The last sector of the disk is the last sector of the last block.
	got := synthReadRange(t, s, l.size-512, 512)
	want := make([]byte, 512)
	synthPattern{size}.ReadAt(want, size-512)
	if !bytes.Equal(got, want) {
		t.Fatal("last sector differs")
	}
	if _, err := NewSynth(vdisk.Identity{VirtualSize: size + 4096}, synthPattern{size}, nil, SynthOptions{}); err == nil {
		t.Fatal("accepted more than 64 TiB")
	}
}

// FuzzSynth: arbitrary allocation maps, sizes, sector and block sizes give
// either an error or a file the independent decoder accepts, whose content
// is the source inside the allocation and zeros elsewhere, and whose bytes
// do not depend on how they are read.
func FuzzSynth(f *testing.F) {
	f.Add(uint32(20480), uint8(0), uint8(0), []byte{0, 0, 0, 1, 0x10, 0, 0, 8})
	f.Add(uint32(1), uint8(1), uint8(1), []byte{0, 0, 0, 0})
	f.Add(uint32(32767), uint8(2), uint8(0), []byte{0xff, 0xff, 0, 2, 0x40, 0x01, 0x7f, 0xff, 0, 3, 0, 1})
	f.Add(uint32(24577), uint8(1), uint8(1), []byte{0x5f, 0xff, 0, 1})
	f.Fuzz(func(t *testing.T, sectors uint32, bsSel, lssSel uint8, ext []byte) {
		lss := []uint32{512, 4096}[lssSel%2]
		size := int64(sectors%(1<<15)) * 512 // up to 16 MiB, maybe not a multiple of lss
		if size == 0 {
			size = 512
		}
		bs := []uint32{1 << 20, 2 << 20, 8 << 20}[bsSel%3]
		var alloc []vdisk.Extent
		for i := 0; i+4 <= len(ext) && len(alloc) < 64; i += 4 {
			// 16-bit offset and length in 1 KiB units, plus odd bytes.
			off := int64(binary.LittleEndian.Uint16(ext[i:]))<<10 + int64(ext[i]&7)
			n := int64(binary.LittleEndian.Uint16(ext[i+2:])) << 6
			alloc = append(alloc, vdisk.Extent{Off: off, Len: n})
		}
		src := synthPattern{size}
		id := vdisk.Identity{VirtualSize: size, LogicalSectorSize: lss}
		s, err := NewSynth(id, src, alloc, SynthOptions{BlockSize: bs})
		if err != nil {
			t.Fatal(err) // every input here is valid
		}
		p := synthParse(t, s)
		if p.virtualSize != RoundUp(size, int64(lss)) {
			t.Fatalf("virtual size %d for %d", p.virtualSize, size)
		}
		synthVerify(t, s, s.Size(), p, src, alloc, size)
		// Odd-sized reads across the whole file equal one big read.
		whole := synthReadRange(t, s, 0, s.Size())
		for off, step := int64(0), int64(ext0(ext))*4093+65537; off < s.Size(); off += step {
			n := min(step, s.Size()-off)
			if !bytes.Equal(synthReadRange(t, s, off, n), whole[off:off+n]) {
				t.Fatalf("read of %d at %d differs", n, off)
			}
		}
	})
}

func ext0(b []byte) byte {
	if len(b) == 0 {
		return 7
	}
	return b[0]
}

// synthMemLender is a source held in memory that lends its bytes (zeros
// outside the allocation, as Lender asks) and counts loans not yet ended.
type synthMemLender struct {
	b       []byte
	loans   atomic.Int64
	refuse  int64 // LendAt refuses ranges that start here (-1: none)
	lentAny atomic.Bool
}

func (m *synthMemLender) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *synthMemLender) LendAt(off int64, n int) ([][]byte, func(), bool) {
	if off == m.refuse || off < 0 || off+int64(n) > int64(len(m.b)) {
		return nil, nil, false
	}
	m.loans.Add(1)
	m.lentAny.Store(true)
	// Two pieces where possible, like a range across two cache blocks.
	h := n / 2
	return [][]byte{m.b[off : off+int64(h)], m.b[off+int64(h) : off+int64(n)]}, func() { m.loans.Add(-1) }, true
}

// TestSynthLendMatchesReadAt: lent ranges of the file carry the bytes
// ReadAt gives (payload across blocks and holes), the generated regions and
// ranges past the source are not lent, refusals end the loans already
// made, and every loan is returned by done.
func TestSynthLendMatchesReadAt(t *testing.T) {
	const size = 40*MiB + 12288 // a multiple of the sector size: no padding
	alloc := []vdisk.Extent{{Off: 0, Len: 3 * MiB}, {Off: 5*MiB + 100, Len: 4096}, {Off: 9 * MiB, Len: 31*MiB + 12288}}
	src := &synthMemLender{b: synthExpected(synthPattern{size}, alloc, size), refuse: -1}
	s := synthMustNew(t, vdisk.Identity{VirtualSize: size}, src, alloc, SynthOptions{BlockSize: 2 * MiB})
	pay := s.lay.payloadOffset
	if _, _, ok := s.LendAt(0, 4096); ok {
		t.Error("lent the header section")
	}
	if _, _, ok := s.LendAt(pay-10, 20); ok {
		t.Error("lent a range starting in the metadata region")
	}
	if _, _, ok := s.LendAt(s.Size()-10, 20); ok {
		t.Error("lent past the end")
	}
	rnd := rand.New(rand.NewPCG(5, 5))
	for i := 0; i < 500; i++ {
		n := 1 + rnd.IntN(3*MiB)
		off := pay + rnd.Int64N(s.Size()-pay-int64(n)+1)
		if i%2 == 0 {
			off -= (off - pay) % MiB // aligned, like FUSE's reads
		}
		want := make([]byte, n)
		if _, err := s.ReadAt(want, off); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		bufs, done, ok := s.LendAt(off, n)
		if !ok {
			t.Fatalf("lend %d at %d refused", n, off)
		}
		var got []byte
		for _, b := range bufs {
			got = append(got, b...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("lend %d at %d: bytes differ from ReadAt", n, off)
		}
		done()
	}
	if !src.lentAny.Load() {
		t.Error("the source was never asked to lend")
	}
	// A range over two payload blocks whose second one the source refuses:
	// not lent, and the first block's loan is ended.
	src.refuse = 10 * MiB
	var at int64 = -1
	for _, r := range s.PayloadMap() {
		if r.DiskOffset <= 9*MiB && 9*MiB < r.DiskOffset+r.Blocks*2*MiB {
			at = r.FileOffset + 9*MiB - r.DiskOffset
		}
	}
	if _, _, ok := s.LendAt(at, 2*MiB); ok || at < 0 {
		t.Errorf("lent a range the source refused (at %d)", at)
	}
	if n := src.loans.Load(); n != 0 {
		t.Errorf("%d loans never ended", n)
	}
	// An odd-sized source: the padding past it (the rest of the last
	// block, the rounding to a sector) lends as zeros.
	odd := &synthMemLender{b: synthExpected(synthPattern{size - 100}, alloc, size-100), refuse: -1}
	so := synthMustNew(t, vdisk.Identity{VirtualSize: size - 100}, odd, alloc, SynthOptions{BlockSize: 2 * MiB})
	for _, off := range []int64{so.Size() - 2*MiB, so.Size() - MiB - 5000} {
		want := make([]byte, min(2*MiB-10, so.Size()-off))
		so.ReadAt(want, off)
		bufs, done, ok := so.LendAt(off, len(want))
		if !ok || !bytes.Equal(bytes.Join(bufs, nil), want) {
			t.Errorf("lend at %d before the end of an odd-sized source: ok %v, bytes differ", off, ok)
		} else {
			done()
		}
	}
	// A source that cannot lend: nothing is lent.
	plain := synthMustNew(t, vdisk.Identity{VirtualSize: size}, synthPattern{size}, alloc, SynthOptions{})
	if _, _, ok := plain.LendAt(plain.lay.payloadOffset, 4096); ok {
		t.Error("lent from a source that is no Lender")
	}
}
