package vhdx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// diffChain is a three-file chain written by WriteFile (base) and
// WriteDiffFile (two empty children), with the raw bytes it must read as.
type diffChain struct {
	dir            string
	base, mid, top string
	raw            []byte
	baseID, midID  vdisk.Identity
	midP, topP     DiffParent
}

func diffGUID(n byte) vdisk.GUID { return vdisk.GUID{0xd1, 0xff, n, 0x42, 8: 0x80, 15: n} }

// diffBuildChain writes base.vhdx (random extents, 1 MiB blocks, logical
// 512 / physical 4096, an odd virtual size), mid.avhdx and top.avhdx
// (2 MiB blocks, the default) into a temporary directory.
func diffBuildChain(t *testing.T) *diffChain {
	t.Helper()
	c := &diffChain{dir: t.TempDir()}
	c.base, c.mid, c.top = filepath.Join(c.dir, "base.vhdx"), filepath.Join(c.dir, "mid.avhdx"), filepath.Join(c.dir, "top.avhdx")
	const vs = 40*MiB + 512
	c.raw = make([]byte, vs)
	rng := rand.New(rand.NewPCG(7, 8))
	var alloc []vdisk.Extent
	for _, e := range []vdisk.Extent{{Off: 0, Len: 70000}, {Off: 3*MiB + 512, Len: 5 * MiB}, {Off: 39 * MiB, Len: MiB + 512}} {
		for i := e.Off; i < e.End(); i++ {
			c.raw[i] = byte(rng.Uint32() | 1)
		}
		alloc = append(alloc, e)
	}
	c.baseID = vdisk.Identity{Format: "vhdx", DiskID: diffGUID(1), DataWriteGUID: diffGUID(2), VirtualSize: vs,
		LogicalSectorSize: 512, PhysicalSectorSize: 4096, BlockSize: MiB}
	ctx := context.Background()
	if err := WriteFile(ctx, c.base, c.baseID, bytes.NewReader(c.raw), alloc, SynthOptions{}); err != nil {
		t.Fatal(err)
	}
	c.midID = vdisk.Identity{DiskID: diffGUID(3), DataWriteGUID: diffGUID(4), VirtualSize: vs, LogicalSectorSize: 512, PhysicalSectorSize: 4096}
	c.midP = DiffParent{Linkage: c.baseID.DataWriteGUID, RelativePath: `.\base.vhdx`, AbsoluteWin32Path: `C:\VMs\t\base.vhdx`}
	if err := WriteDiffFile(ctx, c.mid, c.midID, c.midP, SynthOptions{}); err != nil {
		t.Fatal(err)
	}
	c.top = filepath.Join(c.dir, "top.avhdx")
	topID := vdisk.Identity{DiskID: diffGUID(5), DataWriteGUID: diffGUID(6), VirtualSize: vs, LogicalSectorSize: 512, PhysicalSectorSize: 4096}
	c.topP = DiffParent{Linkage: c.midID.DataWriteGUID, RelativePath: `.\mid.avhdx`,
		AbsoluteWin32Path: `C:\VMs\t\mid.avhdx`, VolumePath: `\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\VMs\t\mid.avhdx`}
	if err := WriteDiffFile(ctx, c.top, topID, c.topP, SynthOptions{}); err != nil {
		t.Fatal(err)
	}
	c.baseID.ChainLength = 1
	return c
}

func diffSHA(t testing.TB, r io.ReaderAt, size int64) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// TestDiffChainReadsParent: our chain reader opens the top of the chain and
// reads exactly the base's bytes (every child block NOT_PRESENT), reports
// the identity of the top and lists each file's own facts.
func TestDiffChainReadsParent(t *testing.T) {
	c := diffBuildChain(t)
	d, err := Open(c.top)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, want := diffSHA(t, d, d.Size()), sha256.Sum256(c.raw); got != want || d.Size() != int64(len(c.raw)) {
		t.Fatalf("chain content differs from the base's raw bytes (size %d, want %d)", d.Size(), len(c.raw))
	}
	id := d.Identity()
	if id.ChainLength != 3 || id.DiskID != diffGUID(5) || id.DataWriteGUID != diffGUID(6) || id.ParentPath != c.mid || id.PhysicalSectorSize != 4096 || id.BlockSize != 2*MiB {
		t.Fatalf("identity %+v", id)
	}
	base, err := Open(c.base)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	if a, b := d.Allocated(), base.Allocated(); !slicesEqual(a, b) {
		t.Fatalf("chain allocation %v, base alone %v: the children must add nothing", a, b)
	}
	ch := d.Chain()
	want := []ChainFile{
		{Path: c.top, DiskID: diffGUID(5), DataWriteGUID: diffGUID(6), VirtualSize: int64(len(c.raw)), LogicalSectorSize: 512, PhysicalSectorSize: 4096, BlockSize: 2 * MiB,
			ParentLocator: map[string]string{"parent_linkage": "{" + diffGUID(4).String() + "}", "relative_path": c.topP.RelativePath,
				"absolute_win32_path": c.topP.AbsoluteWin32Path, "volume_path": c.topP.VolumePath, "parent_linkage2": "{00000000-0000-0000-0000-000000000000}"}},
		{Path: c.mid, DiskID: diffGUID(3), DataWriteGUID: diffGUID(4), VirtualSize: int64(len(c.raw)), LogicalSectorSize: 512, PhysicalSectorSize: 4096, BlockSize: 2 * MiB,
			ParentLocator: map[string]string{"parent_linkage": "{" + diffGUID(2).String() + "}", "relative_path": `.\base.vhdx`, "absolute_win32_path": `C:\VMs\t\base.vhdx`, "parent_linkage2": "{00000000-0000-0000-0000-000000000000}"}},
		{Path: c.base, DiskID: diffGUID(1), DataWriteGUID: diffGUID(2), VirtualSize: int64(len(c.raw)), LogicalSectorSize: 512, PhysicalSectorSize: 4096, BlockSize: MiB},
	}
	if len(ch) != len(want) {
		t.Fatalf("Chain() has %d files, want %d", len(ch), len(want))
	}
	for i := range want {
		g, w := ch[i], want[i]
		if !maps.Equal(g.ParentLocator, w.ParentLocator) {
			t.Errorf("file %d locator %v, want %v", i, g.ParentLocator, w.ParentLocator)
		}
		g.ParentLocator, w.ParentLocator = nil, nil
		if !reflect.DeepEqual(g, w) {
			t.Errorf("file %d: %+v, want %+v", i, g, w)
		}
	}
	// The children hold no data: every payload and bitmap entry is
	// NOT_PRESENT, and the file ends after the metadata region.
	for _, p := range []string{c.mid, c.top} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		info, err := Inspect(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		nb := PayloadBlocks(int64(len(c.raw)), 2*MiB)
		if info.BAT.Payload[PayloadNotPresent] != nb || info.BAT.SBPresent != 0 || !info.Metadata.HasParent {
			t.Errorf("%s: BAT %+v (want %d payload entries NOT_PRESENT, no bitmap), HasParent %v", p, info.BAT, nb, info.Metadata.HasParent)
		}
		if st.Size() != 2*MiB+MiB+MiB {
			t.Errorf("%s: %d bytes, want 4 MiB (header, log, BAT, metadata; no payload)", p, st.Size())
		}
	}
}

func slicesEqual(a, b []vdisk.Extent) bool {
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

// TestDiffVhdiinfo: libvhdi, an independent reader, sees each child as a
// differencing disk with our identifier, the parent's identifier and the
// parent file name; through python3-libvhdi it reads the chain's bytes.
func TestDiffVhdiinfo(t *testing.T) {
	testenv.NeedTools(t, "vhdiinfo")
	c := diffBuildChain(t)
	for _, tc := range []struct {
		path, typ, id, parent, parentName string
	}{
		{c.base, "Dynamic", diffGUID(2).String(), "", ""},
		{c.mid, "Differential", diffGUID(4).String(), diffGUID(2).String(), `C:\VMs\t\base.vhdx`},
		{c.top, "Differential", diffGUID(6).String(), diffGUID(4).String(), `C:\VMs\t\mid.avhdx`},
	} {
		vi := synthExec(t, "vhdiinfo", tc.path)
		field := func(re string) string {
			m := regexp.MustCompile(re).FindStringSubmatch(vi)
			if m == nil {
				return ""
			}
			return strings.TrimSpace(m[1])
		}
		if got := field(`Disk type\s*:\s*(\S+)`); got != tc.typ {
			t.Errorf("%s: disk type %q, want %q\n%s", tc.path, got, tc.typ, vi)
		}
		if got := field(`Identifier\s*:\s*(\S+)`); got != tc.id {
			t.Errorf("%s: identifier %q, want %q", tc.path, got, tc.id)
		}
		if got := field(`Parent identifier\s*:\s*(\S+)`); got != tc.parent {
			t.Errorf("%s: parent identifier %q, want %q", tc.path, got, tc.parent)
		}
		if got := field(`Parent filename\s*:\s*(.+)`); got != tc.parentName {
			t.Errorf("%s: parent filename %q, want %q", tc.path, got, tc.parentName)
		}
		if got := field(`Media size\s*:.*\((\d+) bytes\)`); got != "41943552" {
			t.Errorf("%s: media size %q", tc.path, got)
		}
	}
	// No content check through libvhdi: 20210425 consults the sector
	// bitmap even for a NOT_PRESENT block, and with the bitmap entry
	// NOT_PRESENT too (as in a fresh Hyper-V checkpoint, and as MS-VHDX
	// allows) it takes file offset 0 ("vhdxfile...") as the bitmap: its
	// bits picked sectors 1, 2, 4, 5, 6, 11, ... of garbage here. Our
	// reader and qemu-img on the base are the content oracles.
}

// TestDiffLikeHyperV writes a child with the identity and locator paths of
// the real Hyper-V checkpoint disk and compares the two files' metadata:
// the same items with the same flags, the same locator entries (only
// parent_linkage is ours to choose), the same facts, and vhdiinfo prints
// the same lines.
func TestDiffLikeHyperV(t *testing.T) {
	sample := rdtGunzip(t, "differencing.avhdx")
	inspect := func(p string) *Info {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		info, err := Inspect(f, st.Size())
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return info
	}
	hv := inspect(sample)
	md := hv.Metadata
	loc := md.ParentLocator
	linkage, err := vdisk.ParseGUID(loc["parent_linkage"])
	if err != nil {
		t.Fatal(err)
	}
	hdr := hv.Headers[hv.CurrentHeader]
	id := vdisk.Identity{DiskID: md.DiskID, DataWriteGUID: hdr.DataWriteGUID, VirtualSize: md.VirtualSize,
		LogicalSectorSize: md.LogicalSectorSize, PhysicalSectorSize: md.PhysicalSectorSize, BlockSize: md.BlockSize}
	ours := filepath.Join(t.TempDir(), "ours.avhdx")
	err = WriteDiffFile(context.Background(), ours, id, DiffParent{Linkage: linkage, RelativePath: loc["relative_path"],
		AbsoluteWin32Path: loc["absolute_win32_path"], VolumePath: loc["volume_path"]}, SynthOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := inspect(ours)
	gm := got.Metadata
	if !maps.Equal(gm.ParentLocator, loc) {
		t.Errorf("locator\n got %q\nwant %q", gm.ParentLocator, loc)
	}
	if gm.BlockSize != md.BlockSize || gm.VirtualSize != md.VirtualSize || gm.DiskID != md.DiskID || !gm.HasParent ||
		gm.LeaveBlocksAllocated || gm.LogicalSectorSize != md.LogicalSectorSize || gm.PhysicalSectorSize != md.PhysicalSectorSize {
		t.Errorf("metadata %+v, want %+v", gm, md)
	}
	flags := func(items []MetadataItem) map[vdisk.GUID][3]bool {
		m := map[vdisk.GUID][3]bool{}
		for _, it := range items {
			m[it.ID] = [3]bool{it.IsUser, it.IsVirtualDisk, it.IsRequired}
		}
		return m
	}
	if g, w := flags(gm.Items), flags(md.Items); !maps.Equal(g, w) {
		t.Errorf("metadata items and flags\n got %v\nwant %v", g, w)
	}
	if got.BAT.Entries < hv.BAT.Entries || got.BAT.Payload[PayloadNotPresent] != hv.BAT.Payload[PayloadNotPresent]+hv.BAT.Payload[PayloadPartiallyPresent] {
		t.Errorf("BAT %+v; Hyper-V's has %+v", got.BAT, hv.BAT)
	}
	if _, err := exec.LookPath("vhdiinfo"); err != nil {
		testenv.Skip(t, "needs vhdiinfo")
	}
	// Same DataWriteGuid as the sample: every line must match.
	a, b := synthExec(t, "vhdiinfo", sample), synthExec(t, "vhdiinfo", ours)
	if a != b {
		t.Errorf("vhdiinfo differs:\nHyper-V:\n%s\nours:\n%s", a, b)
	}
}

// TestDiffLayoutBAT: a differencing BAT has a bitmap entry after every
// chunk, the last included, so it can need more room than a dynamic one;
// at 131041 blocks of 1 MiB (chunk ratio 4096) the dynamic BAT fills
// exactly 1 MiB and the differencing one needs 2.
func TestDiffLayoutBAT(t *testing.T) {
	for _, tc := range []struct {
		vs     int64
		bs     uint32
		lss    uint32
		batLen int64
	}{
		{131041 * MiB, MiB, 512, 2 * MiB},
		{126976 * MiB, MiB, 512, MiB}, // 31 chunks: 127007 entries
		{8 << 30, 2 * MiB, 512, MiB},
		{10 * MiB, 32 * MiB, 4096, MiB},
	} {
		id := vdisk.Identity{VirtualSize: tc.vs, BlockSize: tc.bs, LogicalSectorSize: tc.lss}
		l := diffLayout(id)
		need := BATEntries(tc.vs, tc.bs, tc.lss, true)
		if l.batLength != tc.batLen || l.batEntries != need || l.metaOffset != 2*MiB+tc.batLen || l.size != l.metaOffset+MiB {
			t.Errorf("%+v: layout %+v, want BAT %d bytes for %d entries", tc, l, tc.batLen, need)
		}
	}
	// And the reader accepts the big one (it checks the BAT region fits
	// every entry).
	p := filepath.Join(t.TempDir(), "big.avhdx")
	err := WriteDiffFile(context.Background(), p, vdisk.Identity{VirtualSize: 131041 * MiB, BlockSize: MiB, LogicalSectorSize: 512},
		DiffParent{Linkage: diffGUID(9), RelativePath: `.\p.vhdx`}, SynthOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	info, err := Inspect(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if info.BATRegion.Length != 2*MiB || info.BAT.Payload[PayloadNotPresent] != 131041 {
		t.Fatalf("BAT region %+v, counts %+v", info.BATRegion, info.BAT)
	}
}

func TestDiffErrors(t *testing.T) {
	ok := vdisk.Identity{VirtualSize: 10 * MiB}
	par := DiffParent{Linkage: diffGUID(1), RelativePath: `.\p.vhdx`}
	for _, tc := range []struct {
		id   vdisk.Identity
		p    DiffParent
		want string
	}{
		{ok, DiffParent{RelativePath: `.\p.vhdx`}, "vhdx: diff: zero parent linkage"},
		{ok, DiffParent{Linkage: diffGUID(1)}, "vhdx: diff: parent locator names no path"},
		{ok, DiffParent{Linkage: diffGUID(1), VolumePath: strings.Repeat("x", 32768)}, "vhdx: diff: parent path of 32768 UTF-16 units"},
		{vdisk.Identity{}, par, "vhdx: diff: vhdx: synth: virtual size 0 out of range"},
		{vdisk.Identity{VirtualSize: MiB, LogicalSectorSize: 1000}, par, "logical sector size 1000"},
		{vdisk.Identity{VirtualSize: MiB, BlockSize: 3 * MiB}, par, ""},
	} {
		_, err := NewDiff(tc.id, tc.p, SynthOptions{})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.id, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v %+v: error %v, want %q", tc.id, tc.p, err, tc.want)
		}
	}
	// An invalid block size in the identity falls back to the default,
	// as for NewSynth.
	s, err := NewDiff(vdisk.Identity{VirtualSize: MiB, BlockSize: 3 * MiB}, par, SynthOptions{})
	if err != nil || s.Identity().BlockSize != SynthDefaultBlockSize {
		t.Fatalf("%v %+v", err, s)
	}
	// No payload: a read past the metadata is EOF, never a source read.
	if n, err := s.ReadAt(make([]byte, 10), s.Size()); n != 0 || err != io.EOF {
		t.Fatalf("read at EOF: %d %v", n, err)
	}
}
