package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// rdtSpec describes a small VHDX for rdtBuild: 1 MiB blocks, one chunk.
type rdtSpec struct {
	vsize     int64
	bs        uint32 // 0: 1 MiB (rdtExpected assumes 1 MiB)
	lss       uint32
	dataWrite vdisk.GUID
	locator   map[string]string // non-nil: differencing disk
	states    []uint8           // payload state per block
	seed      uint64            // payload data of present blocks
	// present reports, for PARTIALLY_PRESENT blocks, whether a sector
	// (absolute sector number) is in this file.
	present func(sector int64) bool
}

// rdtBuild writes a VHDX per MS-VHDX 2.x from scratch, independent of the
// reader: header section, empty log, BAT, metadata (with parent locator),
// one sector bitmap block if needed, payload blocks.
func rdtBuild(t testing.TB, s rdtSpec) []byte {
	t.Helper()
	le := binary.LittleEndian
	bs := uint32(MiB)
	if s.bs != 0 {
		bs = s.bs
	}
	lss := s.lss
	if lss == 0 {
		lss = 512
	}
	hasParent := s.locator != nil
	entries := BATEntries(s.vsize, bs, lss, hasParent)
	cr := ChunkRatio(bs, lss)
	batLen := RoundUp(entries*8, MiB)
	batOff := int64(2 * MiB)
	metaOff := batOff + batLen
	sbOff := metaOff + MiB
	dataOff := sbOff + MiB
	nb := PayloadBlocks(s.vsize, bs)
	f := make([]byte, dataOff+nb*int64(bs))
	copy(f, SigFile)
	// Headers.
	for i, h := range []int{Header1Offset, Header2Offset} {
		copy(f[h:], SigHeader)
		le.PutUint64(f[h+8:], uint64(i+1))
		fw := vdisk.GUID{0xf1, byte(i)}.Mixed()
		copy(f[h+16:], fw[:])
		dw := s.dataWrite.Mixed()
		copy(f[h+32:], dw[:])
		le.PutUint16(f[h+66:], 1)
		le.PutUint32(f[h+68:], MiB)
		le.PutUint64(f[h+72:], MiB)
		rdtFixCRC(f, h, HeaderSize)
	}
	// Region tables.
	for _, r := range []int{RegionTable1Off, RegionTable2Off} {
		copy(f[r:], SigRegion)
		le.PutUint32(f[r+8:], 2)
		for i, e := range []struct {
			g        vdisk.GUID
			off, len int64
		}{{RegionBAT, batOff, batLen}, {RegionMetadata, metaOff, MiB}} {
			x := f[r+16+32*i:]
			g := e.g.Mixed()
			copy(x, g[:])
			le.PutUint64(x[16:], uint64(e.off))
			le.PutUint32(x[24:], uint32(e.len))
			le.PutUint32(x[28:], 1)
		}
		rdtFixCRC(f, r, RegionTableSize)
	}
	// Metadata.
	m := f[metaOff:]
	copy(m, SigMetadata)
	flags := uint32(0)
	if hasParent {
		flags = 2
	}
	item := make([]byte, 40)
	le.PutUint32(item[0:], bs)
	le.PutUint32(item[4:], flags)
	le.PutUint64(item[8:], uint64(s.vsize))
	id := vdisk.GUID{0x1d, 0x15, 0x4b}.Mixed()
	copy(item[16:], id[:])
	le.PutUint32(item[32:], lss)
	le.PutUint32(item[36:], 512)
	copy(m[64*1024:], item)
	type ent struct {
		g        vdisk.GUID
		off, len uint32
		flags    uint32
	}
	ents := []ent{{MetaFileParameters, 0x10000, 8, 4}, {MetaVirtualSize, 0x10008, 8, 6}, {MetaDiskID, 0x10010, 16, 6},
		{MetaLogicalSector, 0x10020, 4, 6}, {MetaPhysicalSector, 0x10024, 4, 6}}
	if hasParent {
		loc := rdtLocator(s.locator)
		copy(m[0x10028:], loc)
		ents = append(ents, ent{MetaParentLocator, 0x10028, uint32(len(loc)), 4})
	}
	le.PutUint16(m[10:], uint16(len(ents)))
	for i, e := range ents {
		x := m[32+32*i:]
		g := e.g.Mixed()
		copy(x, g[:])
		le.PutUint32(x[16:], e.off)
		le.PutUint32(x[20:], e.len)
		le.PutUint32(x[24:], e.flags)
	}
	// BAT, sector bitmap and payload.
	rng := rand.New(rand.NewPCG(s.seed, 7))
	needSB := false
	for b, st := range s.states {
		e := uint64(st)
		if st == PayloadFullyPresent || st == PayloadPartiallyPresent {
			off := dataOff + int64(b)*int64(bs)
			e |= uint64(off)
			rdtFill(f[off:off+int64(bs)], rng)
		}
		if st == PayloadPartiallyPresent {
			needSB = true
			spb := int64(bs) / int64(lss)
			for k := range spb {
				sec := int64(b)*spb + k
				if s.present(sec) {
					f[sbOff+sec/8] |= 1 << (sec % 8)
				}
			}
		}
		le.PutUint64(f[batOff+8*BATIndex(int64(b), cr):], e)
	}
	if needSB {
		le.PutUint64(f[batOff+8*SBIndex(0, cr):], uint64(sbOff)|SBPresent)
	}
	return f
}

// rdtFill fills p with non-zero pseudo-random bytes (fast: 8 bytes a step).
func rdtFill(p []byte, rng *rand.Rand) {
	for i := 0; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64()|0x0101010101010101)
	}
}

// rdtLocator encodes a VHDX parent locator item.
func rdtLocator(kv map[string]string) []byte {
	le := binary.LittleEndian
	keys := []string{"parent_linkage", "parent_linkage2", "relative_path", "absolute_win32_path", "volume_path"}
	var present []string
	for _, k := range keys {
		if _, ok := kv[k]; ok {
			present = append(present, k)
		}
	}
	hdr := make([]byte, 20+12*len(present))
	g := LocatorTypeVHDX.Mixed()
	copy(hdr, g[:])
	le.PutUint16(hdr[18:], uint16(len(present)))
	var strs []byte
	enc := func(s string) (uint32, uint16) {
		off := uint32(len(hdr) + len(strs))
		for _, u := range utf16.Encode([]rune(s)) {
			strs = le.AppendUint16(strs, u)
		}
		return off, uint16(uint32(len(hdr)+len(strs)) - off)
	}
	for i, k := range present {
		ko, kl := enc(k)
		vo, vl := enc(kv[k])
		e := hdr[20+12*i:]
		le.PutUint32(e[0:], ko)
		le.PutUint32(e[4:], vo)
		le.PutUint16(e[8:], kl)
		le.PutUint16(e[10:], vl)
	}
	return append(hdr, strs...)
}

// rdtFS is an in-memory file system for Options.OpenParent.
type rdtFS map[string][]byte

func (m rdtFS) open(path string) (io.ReaderAt, int64, io.Closer, error) {
	b, ok := m[path]
	if !ok {
		return nil, 0, nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
	}
	return bytes.NewReader(b), int64(len(b)), io.NopCloser(nil), nil
}

// rdtLayerSpec pairs a spec with its built bytes for the expectation.
type rdtLayerSpec struct {
	spec rdtSpec
	file []byte
}

// rdtExpected computes the chain's content sector by sector straight from
// the spec rules of MS-VHDX 3 (VHDX-NOTES §3), from the built files.
func rdtExpected(layers []rdtLayerSpec) []byte {
	top := layers[0].spec
	out := make([]byte, top.vsize)
	const bs = MiB
	for sec := int64(0); sec < top.vsize/512; sec++ {
		for _, l := range layers {
			if sec*512 >= l.spec.vsize {
				break
			}
			b := sec * 512 / bs
			st := l.spec.states[b]
			if st == PayloadNotPresent || (st == PayloadPartiallyPresent && !l.spec.present(sec)) {
				continue
			}
			if st == PayloadFullyPresent || st == PayloadPartiallyPresent {
				f := l.file
				dataOff := int64(len(f)) - PayloadBlocks(l.spec.vsize, bs)*bs
				copy(out[sec*512:], f[dataOff+sec*512:][:512])
			}
			break
		}
	}
	return out
}

func rdtGUIDn(n byte) vdisk.GUID { return vdisk.GUID{0xa0, n, 0x4d, 0x11} }

// TestReaderChain opens hand-built three-level chains from an in-memory
// file system and compares every byte and Allocated with the spec rules.
func TestReaderChain(t *testing.T) {
	odd := func(sec int64) bool { return sec%3 != 0 && sec%1000 > 17 }
	base := rdtSpec{vsize: 6 * MiB, dataWrite: rdtGUIDn(1), states: []uint8{6, 6, 0, 2, 6, 6}, seed: 1}
	mid := rdtSpec{vsize: 6 * MiB, dataWrite: rdtGUIDn(2), seed: 2, present: odd,
		states:  []uint8{0, 7, 6, 0, 2, 0},
		locator: map[string]string{"parent_linkage": "{" + strings.ToUpper(rdtGUIDn(1).String()) + "}", "relative_path": `..\base\base.vhdx`}}
	top := rdtSpec{vsize: 7 * MiB, dataWrite: rdtGUIDn(3), seed: 3, present: func(s int64) bool { return s%2 == 0 },
		states: []uint8{7, 0, 0, 7, 0, 2, 0},
		// Only the second linkage matches (a merge in progress); the
		// relative path is missing, the absolute one resolves.
		locator: map[string]string{"parent_linkage": "{00000000-0000-0000-0000-00000000dead}", "parent_linkage2": rdtGUIDn(2).String(),
			"relative_path": `.\gone.avhdx`, "absolute_win32_path": `\\?\D:\vms\mid.avhdx`}}
	layers := []rdtLayerSpec{{top, rdtBuild(t, top)}, {mid, rdtBuild(t, mid)}, {base, rdtBuild(t, base)}}
	files := rdtFS{"/x/vms/top.avhdx": layers[0].file, "/vms/mid.avhdx": layers[1].file, "/base/base.vhdx": layers[2].file}
	d, err := OpenFile(bytes.NewReader(layers[0].file), int64(len(layers[0].file)), "/x/vms/top.avhdx", Options{OpenParent: files.open})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := rdtExpected(layers)
	got := make([]byte, d.Size())
	if n, err := d.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatal(n, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Fatalf("chain content differs at byte %d (block %d)", i, i/MiB)
	}
	// Unaligned piecewise reads must agree too.
	for _, step := range []int{1, 511, 513, 4096 + 7, MiB - 1} {
		buf := make([]byte, step)
		for off := 0; off < len(want); off += step * 37 {
			n, _ := d.ReadAt(buf, int64(off))
			if !bytes.Equal(buf[:n], want[off:off+n]) {
				t.Fatalf("step %d: mismatch at %d", step, off)
			}
		}
	}
	id := d.Identity()
	if id.ChainLength != 3 || id.ParentPath != "/vms/mid.avhdx" || id.DataWriteGUID != rdtGUIDn(3) || id.VirtualSize != 7*MiB {
		t.Errorf("identity %+v", id)
	}
	// Allocated, block by block: top 7,0,0,7,0,2,0 over mid 0,7,6,0,2,0
	// over base 6,6,0,2,6,6 -> blocks 0,1,2,3 present, 4 masked by mid's
	// ZERO, 5 masked by top's ZERO, 6 beyond the parents.
	wantAlloc := []vdisk.Extent{{Off: 0, Len: 4 * MiB}}
	if a := d.Allocated(); fmt.Sprint(a) != fmt.Sprint(wantAlloc) {
		t.Errorf("Allocated %v, want %v", a, wantAlloc)
	}
	rdtCheckAllocated(t, d, want)
}

// TestReaderChainErrors covers the ways a chain can be wrong.
func TestReaderChainErrors(t *testing.T) {
	base := rdtSpec{vsize: 2 * MiB, dataWrite: rdtGUIDn(1), states: []uint8{6, 0}}
	child := func(link vdisk.GUID, rel string, dw byte) rdtSpec {
		return rdtSpec{vsize: 2 * MiB, dataWrite: rdtGUIDn(dw), states: []uint8{0, 6},
			locator: map[string]string{"parent_linkage": "{" + link.String() + "}", "relative_path": rel}}
	}
	base4k := base
	base4k.lss = 4096
	files := rdtFS{
		"/d/base.vhdx":   rdtBuild(t, base),
		"/d/base4k.vhdx": rdtBuild(t, base4k),
		"/d/self.avhdx":  rdtBuild(t, child(rdtGUIDn(9), `.\self.avhdx`, 9)),
		"/d/a.avhdx":     rdtBuild(t, child(rdtGUIDn(11), `.\b.avhdx`, 10)),
		"/d/b.avhdx":     rdtBuild(t, child(rdtGUIDn(10), `.\a.avhdx`, 11)),
		"/d/c1.avhdx":    rdtBuild(t, child(rdtGUIDn(1), `.\base.vhdx`, 21)),
		"/d/c2.avhdx":    rdtBuild(t, child(rdtGUIDn(21), `.\c1.avhdx`, 22)),
		"/d/wrong.avhdx": rdtBuild(t, child(rdtGUIDn(5), `.\base.vhdx`, 30)),
		"/d/lss.avhdx":   rdtBuild(t, child(rdtGUIDn(1), `.\base4k.vhdx`, 31)),
		"/d/miss.avhdx":  rdtBuild(t, child(rdtGUIDn(1), `..\other\nothere.vhdx`, 32)),
	}
	volOnly := child(rdtGUIDn(1), "", 33)
	volOnly.locator = map[string]string{"parent_linkage": rdtGUIDn(1).String(), "volume_path": `\\?\Volume{0000}\base.vhdx`}
	files["/d/vol.avhdx"] = rdtBuild(t, volOnly)
	open := func(name string, depth int) error {
		f := files[name]
		d, err := OpenFile(bytes.NewReader(f), int64(len(f)), name, Options{OpenParent: files.open, MaxChainDepth: depth})
		if err == nil {
			d.Close()
		}
		return err
	}
	for _, c := range []struct {
		name    string
		depth   int
		want    string
		corrupt bool
	}{
		{"/d/c2.avhdx", 0, "", false},
		{"/d/c2.avhdx", 2, "vhdx: open c2.avhdx: differencing chain longer than 2 files", true},
		{"/d/self.avhdx", 0, "differencing chain loops back to /d/self.avhdx", true},
		{"/d/a.avhdx", 0, "differencing chain loops back to /d/a.avhdx", true},
		{"/d/wrong.avhdx", 0, "vhdx: open wrong.avhdx: parent /d/base.vhdx has DataWriteGuid {" + rdtGUIDn(1).String() + "}, want parent_linkage {" + rdtGUIDn(5).String() + "}", true},
		{"/d/lss.avhdx", 0, "vhdx: open lss.avhdx: logical sector size 512 differs from parent /d/base4k.vhdx (4096)", true},
		{"/d/miss.avhdx", 0, `vhdx: open miss.avhdx: parent not found: ..\other\nothere.vhdx (tried /other/nothere.vhdx)`, false},
		{"/d/vol.avhdx", 0, "volume_path", false},
	} {
		err := open(c.name, c.depth)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || errors.Is(err, vdisk.ErrCorrupt) != c.corrupt {
			t.Errorf("%s: err %v, want %q (corrupt=%v)", c.name, err, c.want, c.corrupt)
		}
	}
}

// TestReaderParentPathTable checks the locator path conversions.
func TestReaderParentPathTable(t *testing.T) {
	for _, c := range []struct {
		in      string
		windows bool
		want    string
	}{
		{`\\?\C:\VMs\base.vhdx`, false, "/VMs/base.vhdx"},
		{`C:\VMs\x\..\base.vhdx`, false, "/VMs/base.vhdx"},
		{`\\?\C:\VMs\base.vhdx`, true, `C:\VMs\base.vhdx`},
		{`relative\base.vhdx`, false, ""},
		{`\\?\UNC\server\share\x.vhdx`, false, ""},
	} {
		if got := rdAbsWin32(c.in, c.windows); got != c.want {
			t.Errorf("rdAbsWin32(%q, %v) = %q, want %q", c.in, c.windows, got, c.want)
		}
	}
	got := parentCandidates("/vm/snap/child.avhdx", map[string]string{"relative_path": `..\.\disks\base.vhdx`, "absolute_win32_path": `\\?\E:\disks\base.vhdx`})
	if fmt.Sprint(got) != "[/vm/disks/base.vhdx /disks/base.vhdx]" {
		t.Errorf("candidates %q", got)
	}
	if got := parentCandidates("child.avhdx", map[string]string{"relative_path": `.\p.vhdx`}); fmt.Sprint(got) != "[p.vhdx]" {
		t.Errorf("candidates %q", got)
	}
}

// TestReaderExtentMathTable checks interval subtraction used by Allocated.
func TestReaderExtentMathTable(t *testing.T) {
	e := func(v ...int64) []vdisk.Extent {
		var out []vdisk.Extent
		for i := 0; i < len(v); i += 2 {
			out = append(out, vdisk.Extent{Off: v[i], Len: v[i+1]})
		}
		return out
	}
	for _, c := range []struct{ a, b, want []vdisk.Extent }{
		{e(0, 10), nil, e(0, 10)},
		{e(0, 10), e(0, 10), nil},
		{e(0, 10), e(2, 3), e(0, 2, 5, 5)},
		{e(0, 10, 20, 10), e(5, 20), e(0, 5, 25, 5)},
		{e(0, 10, 20, 10), e(0, 1, 3, 1, 9, 12, 29, 5), e(1, 2, 4, 5, 21, 8)},
		{e(10, 5), e(0, 3, 20, 3), e(10, 5)},
	} {
		if got := rdSubtract(c.a, c.b); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%v - %v = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// TestReaderBATMathTable pins the interleave facts of VHDX-NOTES §2.
func TestReaderBATMathTable(t *testing.T) {
	for _, c := range []struct {
		vsize         int64
		bs, lss       uint32
		parent        bool
		cr, nb, count int64
	}{
		{10 << 30, MiB, 512, false, 4096, 10240, 10242},
		{10 << 30, MiB, 512, true, 4096, 10240, 3 * 4097},
		{10 * MiB, 2 * MiB, 512, false, 2048, 5, 5},
		{10 * MiB, 32 * MiB, 512, false, 128, 1, 1},
		{8 << 30, 2 * MiB, 512, true, 2048, 4096, 4098},
		{MaxVirtualSize, MiB, 4096, false, 32768, 64 << 20, 64<<20 + (64<<20-1)/32768},
	} {
		if cr := ChunkRatio(c.bs, c.lss); cr != c.cr {
			t.Errorf("cr %d want %d", cr, c.cr)
		}
		if nb := PayloadBlocks(c.vsize, c.bs); nb != c.nb {
			t.Errorf("nb %d want %d", nb, c.nb)
		}
		if n := BATEntries(c.vsize, c.bs, c.lss, c.parent); n != c.count {
			t.Errorf("entries %d want %d", n, c.count)
		}
	}
	for _, c := range []struct{ b, want int64 }{{0, 0}, {4095, 4095}, {4096, 4097}, {8200, 8202}, {10239, 10241}} {
		if got := BATIndex(c.b, 4096); got != c.want {
			t.Errorf("BATIndex(%d) = %d, want %d", c.b, got, c.want)
		}
	}
	if SBIndex(0, 4096) != 4096 || SBIndex(1, 4096) != 8193 {
		t.Error("SBIndex")
	}
	g := rdGeometry{vsize: 5*MiB + 512, bs: 2 * MiB}
	for _, c := range []struct{ b, want int64 }{{0, 2 * MiB}, {1, 2 * MiB}, {2, MiB + 512}} {
		if got := g.blockLen(c.b); got != c.want {
			t.Errorf("blockLen(%d) = %d want %d", c.b, got, c.want)
		}
	}
}

// TestReaderConcurrent reads a chain from many goroutines at once (run
// with -race): ReadAt takes no locks and must still be correct.
func TestReaderConcurrent(t *testing.T) {
	base := rdtSpec{vsize: 4 * MiB, dataWrite: rdtGUIDn(1), states: []uint8{6, 0, 6, 2}, seed: 4}
	child := rdtSpec{vsize: 4 * MiB, dataWrite: rdtGUIDn(2), seed: 5, present: func(s int64) bool { return s%7 < 3 },
		states:  []uint8{7, 6, 0, 7},
		locator: map[string]string{"parent_linkage": rdtGUIDn(1).String(), "relative_path": `.\b.vhdx`}}
	layers := []rdtLayerSpec{{child, rdtBuild(t, child)}, {base, rdtBuild(t, base)}}
	files := rdtFS{"b.vhdx": layers[1].file}
	d, err := OpenFile(bytes.NewReader(layers[0].file), int64(len(layers[0].file)), "c.avhdx", Options{OpenParent: files.open})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := rdtExpected(layers)
	errc := make(chan error, 8)
	for g := range 8 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			buf := make([]byte, 300*1024)
			for range 200 {
				off := rng.Int64N(d.Size())
				n, _ := d.ReadAt(buf[:rng.IntN(len(buf))+1], off)
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errc <- fmt.Errorf("goroutine %d: mismatch at %d", g, off)
					return
				}
				if g == 0 {
					d.Allocated()
				}
			}
			errc <- nil
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}
