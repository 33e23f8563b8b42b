package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// chainVM is a Hyper-V-like VM folder whose disk is a three-file
// checkpoint chain: base.vhdx (qemu-made) <- child.avhdx (vhdxgen: full,
// partial, ZERO and absent blocks; relative_path .\base.vhdx) <- top.avhdx
// (a fresh checkpoint: empty, as Hyper-V creates one; relative_path
// .\child.avhdx). Its guest bytes are testdisks' child.expected.raw.
type chainVM struct {
	dir, vhd, cfg     string
	base, child, top  string
	files             []string // every file a restore to original writes
	expected          string   // raw oracle of the chain's content
	origChain         []vhdx.ChainFile
	topRel, topAbsWin string
}

func newChainVM(t *testing.T) *chainVM {
	t.Helper()
	td := testdisks.Dir(t)
	v := &chainVM{dir: filepath.Join(t.TempDir(), "ChainVM")}
	v.vhd = filepath.Join(v.dir, "Virtual Hard Disks")
	v.cfg = filepath.Join(v.dir, "Virtual Machines", "6B1C2D3E-4F50-4A6B-8C7D-9E0F1A2B3C4D.vmcx")
	os.MkdirAll(v.vhd, 0o755)
	os.MkdirAll(filepath.Dir(v.cfg), 0o755)
	v.base, v.child, v.top = filepath.Join(v.vhd, "base.vhdx"), filepath.Join(v.vhd, "child.avhdx"), filepath.Join(v.vhd, "top.avhdx")
	copyFile(t, filepath.Join(td, testdisks.BaseVHDX), v.base)
	copyFile(t, filepath.Join(td, testdisks.ChildAVHDX), v.child)
	v.expected = filepath.Join(td, testdisks.ChildExpectedRaw)
	c, err := vhdx.Open(v.child)
	if err != nil {
		t.Fatal(err)
	}
	cid := c.Identity()
	c.Close()
	v.topRel, v.topAbsWin = `.\child.avhdx`, `C:\ProgramData\Microsoft\Windows\Virtual Hard Disks\child.avhdx`
	err = vhdx.WriteDiffFile(context.Background(), v.top,
		vdisk.Identity{DiskID: vdisk.GUID{0x70, 0x9, 15: 1}, DataWriteGUID: vdisk.GUID{0x70, 0xd, 15: 2}, VirtualSize: cid.VirtualSize,
			LogicalSectorSize: cid.LogicalSectorSize, PhysicalSectorSize: cid.PhysicalSectorSize},
		vhdx.DiffParent{Linkage: cid.DataWriteGUID, RelativePath: v.topRel, AbsoluteWin32Path: v.topAbsWin}, vhdx.SynthOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(v.cfg, []byte("vmcx of ChainVM"), 0o644)
	v.files = []string{v.base, v.child, v.top, v.cfg}
	d, err := vhdx.Open(v.top)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	v.origChain = d.Chain()
	if len(v.origChain) != 3 || sha256Reader(t, d, d.Size()) != sha256File(t, v.expected) {
		t.Fatalf("fixture chain: %d files, or content differs from %s", len(v.origChain), v.expected)
	}
	return v
}

func (v *chainVM) hashes(t *testing.T) map[string]string {
	h := map[string]string{}
	for _, p := range v.files {
		if _, err := os.Stat(p); err == nil {
			h[p] = sha256File(t, p)
		} else {
			h[p] = ""
		}
	}
	return h
}

// scribble changes every file of the VM (as a guest and the user would
// after the backup), keeping nothing of its old bytes identical.
func (v *chainVM) scribble(t *testing.T) {
	for _, p := range v.files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < len(b); j += 1 << 20 {
			b[j] ^= 0x5a
		}
		b[len(b)-1] ^= 0xa5
		os.WriteFile(p, b, 0o644)
	}
}

func sha256Reader(t testing.TB, r io.ReaderAt, size int64) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// vhdiField returns the value of one vhdiinfo line ("" when absent).
func vhdiField(out, key string) string {
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(key) + `\s*:\s*(.*)$`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(m[1])
}

// TestRestoreChainOriginal: a checkpoint chain restored --to original is a
// chain again. Oracles: our chain reader through the leaf gives exactly
// the backed-up bytes; the base alone gives them too (qemu-img check and
// compare); vhdiinfo sees each file with its new identifier, each child
// as differential with its parent's identifier and the parent file name
// it had; each file keeps its disk ID, sector sizes, block size and
// locator paths; the children hold no data.
func TestRestoreChainOriginal(t *testing.T) {
	v := newChainVM(t)
	r, _ := newRepo(t)
	res := backup(t, r, BackupOptions{VM: "cv", Sources: []string{v.dir}})
	m := res.Manifest
	if len(m.Disks) != 1 || m.Disks[0].Name != "top" {
		t.Fatalf("disks %+v, want the leaf only", res.Pointer.Disks)
	}
	sf := m.Disks[0].SourceFiles
	if len(sf) != 3 || sf[0].Path != v.top || sf[1].Path != v.child || sf[2].Path != v.base {
		t.Fatalf("source files %+v, want top, child, base", sf)
	}
	for i, f := range sf {
		o := v.origChain[i]
		if f.DiskID != o.DiskID || f.DataWriteGUID != o.DataWriteGUID || f.BlockSize != o.BlockSize || f.LogicalSectorSize != o.LogicalSectorSize ||
			f.PhysicalSectorSize != o.PhysicalSectorSize || f.VirtualSize != o.VirtualSize || f.ParentRelativePath != o.ParentLocator["relative_path"] ||
			f.ParentAbsolutePath != o.ParentLocator["absolute_win32_path"] || (i < 2 && f.ParentLinkage != v.origChain[i+1].DataWriteGUID) {
			t.Errorf("source file %d recorded %+v; the file has %+v", i, f, o)
		}
	}

	v.scribble(t)
	rr, err := r.Restore(context.Background(), RestoreOptions{VM: "cv", To: RestoreOriginal})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{v.base, v.child, v.top, v.cfg}; fmt.Sprint(rr.Files) != fmt.Sprint(want) {
		t.Errorf("restored %v, want %v", rr.Files, want)
	}
	restored := v.hashes(t)
	checkRestoredChain(t, v)

	// Oracle: the base alone holds everything (qemu cannot open the
	// differencing children).
	testenv.NeedTools(t, "qemu-img", "vhdiinfo")
	runTool(t, "qemu-img", "check", "-f", "vhdx", v.base)
	if out := runTool(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", v.base, v.expected); !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare base: %s", out)
	}
	// Oracle: libvhdi's view of every file.
	d, err := vhdx.Open(v.top)
	if err != nil {
		t.Fatal(err)
	}
	now := d.Chain()
	d.Close()
	wantName := []string{v.topAbsWin, testdisks.ChildAbsolutePath}
	for i, f := range now {
		out := runTool(t, "vhdiinfo", f.Path)
		typ, parent := "Differential", ""
		if i == len(now)-1 {
			typ = "Dynamic"
		} else {
			parent = now[i+1].DataWriteGUID.String()
		}
		if got := vhdiField(out, "Disk type"); got != typ {
			t.Errorf("%s: vhdiinfo disk type %q, want %q", f.Path, got, typ)
		}
		if got := vhdiField(out, "Identifier"); got != f.DataWriteGUID.String() {
			t.Errorf("%s: vhdiinfo identifier %q, want %s", f.Path, got, f.DataWriteGUID)
		}
		if got := vhdiField(out, "Parent identifier"); got != parent {
			t.Errorf("%s: vhdiinfo parent identifier %q, want %q", f.Path, got, parent)
		}
		if i < len(now)-1 {
			if got := vhdiField(out, "Parent filename"); got != wantName[i] && got != strings.TrimPrefix(wantName[i], `\\?\`) {
				t.Errorf("%s: vhdiinfo parent filename %q, want %q", f.Path, got, wantName[i])
			}
		}
		if got := vhdiField(out, "Media size"); !strings.Contains(got, fmt.Sprintf("(%d bytes)", 19<<19)) {
			t.Errorf("%s: vhdiinfo media size %q", f.Path, got)
		}
	}

	// The same recovery point restored again writes the same bytes (the
	// new DataWriteGuids are derived, not random), and a backup of the
	// restored VM reads the same content.
	v.scribble(t)
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "cv", To: RestoreOriginal}); err != nil {
		t.Fatal(err)
	}
	if got := v.hashes(t); !maps.Equal(got, restored) {
		t.Errorf("second restore of the same point wrote other bytes:\n%v\n%v", got, restored)
	}
	res2 := backup(t, r, BackupOptions{VM: "cv", Sources: []string{v.dir}})
	out := filepath.Join(t.TempDir(), "out")
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "cv", RP: res2.Pointer.ID, To: out, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	if sha256File(t, filepath.Join(out, "Virtual Hard Disks", "top.raw")) != sha256File(t, v.expected) {
		t.Error("backup of the restored chain has other content")
	}
}

// checkRestoredChain checks the restored chain of v with our own reader.
func checkRestoredChain(t *testing.T, v *chainVM) {
	t.Helper()
	d, err := vhdx.Open(v.top)
	if err != nil {
		t.Fatalf("restored chain does not open: %v", err)
	}
	defer d.Close()
	if got, want := sha256Reader(t, d, d.Size()), sha256File(t, v.expected); got != want {
		t.Errorf("restored chain reads %s, backed-up content %s", got, want)
	}
	now := d.Chain()
	if len(now) != 3 {
		t.Fatalf("restored chain has %d files", len(now))
	}
	for i, f := range now {
		o := v.origChain[i]
		if f.Path != o.Path || f.DiskID != o.DiskID || f.LogicalSectorSize != o.LogicalSectorSize || f.PhysicalSectorSize != o.PhysicalSectorSize ||
			f.BlockSize != o.BlockSize || f.VirtualSize != o.VirtualSize {
			t.Errorf("file %d: restored %+v, original %+v", i, f, o)
		}
		if f.DataWriteGUID == o.DataWriteGUID {
			t.Errorf("%s kept its DataWriteGuid although its data changed", f.Path)
		}
		if i < len(now)-1 {
			want := maps.Clone(o.ParentLocator)
			want["parent_linkage"] = "{" + now[i+1].DataWriteGUID.String() + "}"
			want["parent_linkage2"] = "{00000000-0000-0000-0000-000000000000}"
			if !maps.Equal(f.ParentLocator, want) {
				t.Errorf("%s: locator %q, want %q", f.Path, f.ParentLocator, want)
			}
			// Empty: no payload or bitmap block, the file ends after
			// the metadata (4 MiB at this size).
			fh, err := os.Open(f.Path)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := fh.Stat()
			info, err := vhdx.Inspect(fh, st.Size())
			fh.Close()
			if err != nil {
				t.Fatal(err)
			}
			if n := info.PayloadBlocks; info.BAT.Payload[vhdx.PayloadNotPresent] != n || info.BAT.SBPresent != 0 || st.Size() != 4<<20 {
				t.Errorf("%s: %d bytes, BAT %+v: want an empty child", f.Path, st.Size(), info.BAT)
			}
		}
	}
}

// TestRestoreChainCrashAtEveryStep kills a chain restore to original at
// every step of its commit (and the recovery that follows at one step
// too): after the recovery a check runs, the chain files and the
// configuration are all as before the restore (killed before the commit
// point) or all restored, never a mix, with no temporary, backup or
// journal left.
func TestRestoreChainCrashAtEveryStep(t *testing.T) {
	v := newChainVM(t)
	r, _ := newRepo(t)
	r.logf = func(string, ...any) {}
	backup(t, r, BackupOptions{VM: "cv", Sources: []string{v.dir}})
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "cv", To: RestoreOriginal}); err != nil {
		t.Fatal(err)
	}
	restored := v.hashes(t)
	v.scribble(t)
	modified := v.hashes(t)
	keep := map[string][]byte{}
	for _, p := range v.files {
		keep[p], _ = os.ReadFile(p)
	}
	reset := func() {
		for p, b := range keep {
			os.WriteFile(p, b, 0o644)
		}
	}
	forget := func() { // the killed process's state is gone
		journalCrashHook = nil
		activeRestores.journals = map[string]bool{}
		activeRestores.temps = map[string]bool{}
	}
	strays := func() []string {
		var s []string
		for _, d := range []string{v.vhd, filepath.Dir(v.cfg), filepath.Join(r.dir, restoreJournalDir)} {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".") || d == filepath.Join(r.dir, restoreJournalDir) {
					s = append(s, e.Name())
				}
			}
		}
		return s
	}
	sawRestored, sawOld := false, false
	for n := 1; ; n++ {
		top := crashAt(t, n)
		_, err := r.Restore(context.Background(), RestoreOptions{VM: "cv", To: RestoreOriginal})
		forget()
		if err == nil {
			if *top >= n {
				t.Fatalf("step %d: restore completed past its crash", n)
			}
			if n < 8 {
				t.Fatalf("only %d commit steps: the chain files are not all in the journal", n-1)
			}
			break
		}
		if !errors.Is(err, errSimulatedCrash) {
			t.Fatalf("step %d: %v", n, err)
		}
		if n%3 == 0 {
			// Kill the recovery once as well; the next one finishes.
			crashAt(t, 2)
			r.recoverBeforeCheck(nil)
			forget()
		}
		r.recoverBeforeCheck(nil)
		got := v.hashes(t)
		switch {
		case maps.Equal(got, modified):
			sawOld = true
		case maps.Equal(got, restored):
			sawRestored = true
			checkRestoredChain(t, v)
		default:
			t.Fatalf("step %d: a mix after recovery:\n got %v\n old %v\n new %v", n, got, modified, restored)
		}
		if s := strays(); len(s) > 0 {
			t.Errorf("step %d: left after recovery: %v", n, s)
		}
		reset()
	}
	if !sawOld || !sawRestored {
		t.Errorf("kills hit only one side of the commit point (old %v, restored %v)", sawOld, sawRestored)
	}
}

// TestRestoreChainOldManifest: a recovery point of an earlier build lists
// the leaf and its parent without chain facts. The chain is then read from
// the original files when they still are the backed-up chain, and the
// restore refuses (pointing to --to DIR) when they are not.
func TestRestoreChainOldManifest(t *testing.T) {
	v := newChainVM(t)
	r, _ := newRepo(t)
	m := backup(t, r, BackupOptions{VM: "cv", Sources: []string{v.dir}}).Manifest
	d := m.Disks[0]
	// What an older build wrote, through JSON as a manifest is read.
	old := []SourceFile{{Path: d.SourceFiles[0].Path, Size: 1, ModTime: 2}, {Path: d.SourceFiles[1].Path, Size: 3, ModTime: 4}}
	b, _ := json.Marshal(old)
	if strings.Contains(string(b), "disk_id") || strings.Contains(string(b), "parent_") {
		t.Fatalf("empty chain facts are written: %s", b)
	}
	d.SourceFiles = nil
	if err := json.Unmarshal(b, &d.SourceFiles); err != nil {
		t.Fatal(err)
	}
	got, err := chainFiles(&d)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("chain from disk: %+v", got)
	}
	for i, f := range got {
		want := m.Disks[0].SourceFiles[i]
		f.Size, f.ModTime, want.Size, want.ModTime = 0, 0, 0, 0
		if f != want {
			t.Errorf("file %d from disk %+v, recorded %+v", i, f, want)
		}
	}
	// The leaf at the original location is another disk now.
	os.Remove(v.top)
	copyFile(t, v.base, v.top)
	if _, err := chainFiles(&d); err == nil || !strings.Contains(err.Error(), "--to DIR") {
		t.Errorf("chain replaced: %v", err)
	}
	os.Remove(v.top)
	if _, err := chainFiles(&d); err == nil || !strings.Contains(err.Error(), "older vmvault") {
		t.Errorf("chain missing: %v", err)
	}
}

// TestRestoreChainRefusals: recorded chains that cannot be written back
// safely, and two disks sharing a base, are refused before anything is
// written.
func TestRestoreChainRefusals(t *testing.T) {
	g := vdisk.GUID{1}
	good := func() *DiskManifest {
		return &DiskManifest{Name: "leaf", Source: "/vm/leaf.avhdx", Identity: vdisk.Identity{ChainLength: 2, VirtualSize: 1 << 20},
			SourceFiles: []SourceFile{
				{Path: "/vm/leaf.avhdx", LogicalSectorSize: 512, ParentLinkage: g, ParentRelativePath: `.\base.vhdx`},
				{Path: "/vm/base.vhdx", LogicalSectorSize: 512, DataWriteGUID: g},
			}}
	}
	if _, err := chainFiles(good()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		change func(d *DiskManifest)
		want   string
	}{
		{func(d *DiskManifest) { d.Source = "/vm/other.avhdx" }, "is not the disk's source"},
		{func(d *DiskManifest) { d.SourceFiles[1].Path = "base.vhdx" }, "relative or repeated"},
		{func(d *DiskManifest) { d.SourceFiles[1].Path = "/vm/./leaf.avhdx" }, "relative or repeated"},
		{func(d *DiskManifest) { d.SourceFiles[1].LogicalSectorSize = 4096 }, "logical sector size 4096"},
		{func(d *DiskManifest) { d.SourceFiles[0].ParentLinkage = vdisk.GUID{} }, "no parent linkage"},
		{func(d *DiskManifest) { d.SourceFiles[0].ParentRelativePath = "" }, "no parent linkage or locator path"},
	} {
		d := good()
		tc.change(d)
		_, err := chainFiles(d)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", tc.want, err)
		}
	}
	nop := func(context.Context, string) error { return nil }
	err := checkDistinctTargets([]restoreItem{{final: "/vm/base.vhdx", write: nop}, {final: "/vm/a.avhdx"}, {final: "/vm/./base.vhdx"}})
	if err == nil || !strings.Contains(err.Error(), "written twice") {
		t.Errorf("shared base: %v", err)
	}
}

// TestRestoreChainHyperVSample restores a chain whose leaf is the real
// Hyper-V checkpoint disk (partially present blocks with a sector
// bitmap, Hyper-V's locator with absolute_win32_path and volume_path)
// over a base made for it (its file name and DataWriteGuid are what the
// checkpoint's locator names). The restored checkpoint keeps Hyper-V's
// metadata (disk ID, sizes, block size, every locator entry but the
// linkage), vhdiinfo prints the same lines but the identifiers, and the
// chain reads the bytes it read before the restore.
func TestRestoreChainHyperVSample(t *testing.T) {
	vm := filepath.Join(t.TempDir(), "Gen1")
	vhd := filepath.Join(vm, "Virtual Hard Disks")
	os.MkdirAll(vhd, 0o755)
	leaf := gunzipSample(t, "differencing.avhdx", vhd)
	hv := inspectFile(t, leaf)
	loc := hv.Metadata.ParentLocator
	parentDW, err := vdisk.ParseGUID(loc["parent_linkage"])
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(vhd, strings.TrimPrefix(loc["relative_path"], `.\`))
	// The base: random data in the first and last MiB and around 1 GiB.
	vs := hv.Metadata.VirtualSize
	rng := rand.New(rand.NewPCG(3, 4))
	data := map[int64][]byte{}
	var alloc []vdisk.Extent
	for _, off := range []int64{0, 1<<30 - 4096, vs - 1<<20} {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		data[off] = b
		alloc = append(alloc, vdisk.Extent{Off: off, Len: 1 << 20})
	}
	src := readerFunc(func(p []byte, off int64) (int, error) {
		clear(p)
		for o, b := range data {
			if off < o+int64(len(b)) && o < off+int64(len(p)) {
				lo := max(o, off)
				copy(p[lo-off:], b[lo-o:])
			}
		}
		return len(p), nil
	})
	bid := vdisk.Identity{DiskID: vdisk.GUID{0xba, 0x5e}, DataWriteGUID: parentDW, VirtualSize: vs,
		LogicalSectorSize: hv.Metadata.LogicalSectorSize, PhysicalSectorSize: 4096, BlockSize: 32 << 20}
	if err := vhdx.WriteFile(context.Background(), base, bid, src, alloc, vhdx.SynthOptions{}); err != nil {
		t.Fatal(err)
	}
	before, beforeAlloc := chainDigest(t, leaf, nil)
	r, _ := newRepo(t)
	m := backup(t, r, BackupOptions{VM: "gen1", Sources: []string{vm}}).Manifest
	if len(m.Disks) != 1 || m.Disks[0].Source != leaf || len(m.Disks[0].SourceFiles) != 2 {
		t.Fatalf("backup: %+v", m.Disks)
	}
	vhdiBefore := ""
	if _, err := os.Stat("/usr/bin/vhdiinfo"); err == nil {
		vhdiBefore = runTool(t, "vhdiinfo", leaf)
	}
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "gen1", To: RestoreOriginal}); err != nil {
		t.Fatal(err)
	}
	if after, _ := chainDigest(t, leaf, beforeAlloc); after != before {
		t.Errorf("restored chain reads other bytes than before the restore")
	}
	zerosOutside(t, leaf, beforeAlloc)
	got := inspectFile(t, leaf)
	gm, md := got.Metadata, hv.Metadata
	if gm.DiskID != md.DiskID || gm.BlockSize != md.BlockSize || gm.VirtualSize != md.VirtualSize ||
		gm.LogicalSectorSize != md.LogicalSectorSize || gm.PhysicalSectorSize != md.PhysicalSectorSize || !gm.HasParent {
		t.Errorf("restored checkpoint metadata %+v, Hyper-V's %+v", gm, md)
	}
	want := maps.Clone(loc)
	want["parent_linkage"] = gm.ParentLocator["parent_linkage"]
	if !maps.Equal(gm.ParentLocator, want) || gm.ParentLocator["parent_linkage"] == loc["parent_linkage"] {
		t.Errorf("restored locator %q, Hyper-V's %q (all but parent_linkage kept)", gm.ParentLocator, loc)
	}
	if got.BAT.Payload[vhdx.PayloadPartiallyPresent] != 0 || got.BAT.SBPresent != 0 {
		t.Errorf("restored checkpoint holds data: %+v", got.BAT)
	}
	testenv.NeedTools(t, "vhdiinfo")
	vhdiAfter := runTool(t, "vhdiinfo", leaf)
	strip := func(s string) string {
		return regexp.MustCompile(`(?m)^\s*(Identifier|Parent identifier)\s*:.*$`).ReplaceAllString(s, "")
	}
	if strip(vhdiAfter) != strip(vhdiBefore) {
		t.Errorf("vhdiinfo differs beyond the identifiers:\nbefore:\n%s\nafter:\n%s", vhdiBefore, vhdiAfter)
	}
	baseInfo := runTool(t, "vhdiinfo", base)
	if vhdiField(vhdiAfter, "Parent identifier") != vhdiField(baseInfo, "Identifier") || vhdiField(baseInfo, "Disk type") != "Dynamic" {
		t.Errorf("vhdiinfo: checkpoint's parent identifier %q, base's identifier %q (%s)",
			vhdiField(vhdiAfter, "Parent identifier"), vhdiField(baseInfo, "Identifier"), vhdiField(baseInfo, "Disk type"))
	}
}

type readerFunc func(p []byte, off int64) (int, error)

func (f readerFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

func inspectFile(t *testing.T, p string) *vhdx.Info {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	info, err := vhdx.Inspect(f, st.Size())
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return info
}

// chainDigest hashes the chain's bytes over ranges, or its allocated
// ranges when nil (an 8 GiB disk is not read whole; everything else reads
// as zeros by the Allocated contract). It returns the ranges it hashed.
func chainDigest(t *testing.T, leaf string, ranges []vdisk.Extent) (string, []vdisk.Extent) {
	t.Helper()
	d, err := vhdx.Open(leaf)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ext := ranges
	if ext == nil {
		ext = d.Allocated()
	}
	h := sha256.New()
	for _, e := range ext {
		fmt.Fprintf(h, "%d+%d:", e.Off, e.Len)
		if _, err := io.Copy(h, io.NewSectionReader(d, e.Off, e.Len)); err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), ext
}

// zerosOutside checks that the chain's allocated bytes outside keep read
// as zeros.
func zerosOutside(t *testing.T, leaf string, keep []vdisk.Extent) {
	t.Helper()
	d, err := vhdx.Open(leaf)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 1<<20)
	for _, e := range d.Allocated() {
		for off := e.Off; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			// Skip what keep covers.
			for _, k := range keep {
				if off >= k.Off && off < k.End() {
					n = 0
					off = k.End()
					break
				}
				if k.Off > off && k.Off < off+n {
					n = k.Off - off
				}
			}
			if n <= 0 {
				continue
			}
			if _, err := d.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !isZero(buf[:n]) {
				t.Fatalf("restored chain has data at %d, outside what it held before", off)
			}
			off += n
		}
	}
}
