package engine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs"
)

// TestBackupRestoreDisks backs up every kind of test disk, restores it as
// VHDX and raw, and checks the results with independent tools: qemu-img
// check and compare against the raw oracle, vhdiinfo's identifier (the
// DataWriteGuid) kept, and sha256 of the raw restore.
func TestBackupRestoreDisks(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "vhdiinfo")
	td := testdisks.Dir(t)
	tmp := t.TempDir()
	type tc struct {
		name   string
		src    string // file backed up
		oracle string // raw guest bytes
		vhdx   bool   // source is VHDX: identifier must survive
	}
	cases := []tc{
		{"gpt", filepath.Join(td, testdisks.GPTVHDX), filepath.Join(td, testdisks.GPTRaw), true},
		{"mbr-fixed", filepath.Join(td, testdisks.MBRVHDX), filepath.Join(td, testdisks.MBRRaw), true},
		{"nopart", filepath.Join(td, testdisks.NoPartRaw), filepath.Join(td, testdisks.NoPartRaw), false},
		{"child", filepath.Join(td, testdisks.ChildAVHDX), filepath.Join(td, testdisks.ChildExpectedRaw), true},
		{"dirty", filepath.Join(td, testdisks.DirtyVHDX), filepath.Join(td, testdisks.DirtyExpectedRaw), true},
	}
	for _, s := range []string{"fixed.vhdx", "dynamic.vhdx"} {
		if _, err := os.Stat(filepath.Join(testenv.HyperVSamples(t), s+".gz")); err != nil {
			testenv.Skip(t, "Hyper-V sample missing: "+s)
			continue
		}
		p := gunzipSample(t, s, tmp)
		raw := filepath.Join(tmp, strings.TrimSuffix(s, ".vhdx")+".oracle.raw")
		runTool(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", p, raw)
		cases = append(cases, tc{strings.TrimSuffix(s, ".vhdx"), p, raw, true})
	}
	r, _ := newRepo(t)
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := backup(t, r, BackupOptions{VM: "vm-" + c.name, Sources: []string{c.src}})
			if len(res.Manifest.Disks) != 1 || res.Manifest.Disks[0].Name != c.name {
				t.Fatalf("disks %+v, want one named %s", res.Pointer.Disks, c.name)
			}
			out := filepath.Join(tmp, "out-"+c.name)
			if _, err := r.Restore(ctx, RestoreOptions{VM: "vm-" + c.name, RP: "latest", To: out}); err != nil {
				t.Fatal(err)
			}
			restored := filepath.Join(out, c.name+".vhdx")
			runTool(t, "qemu-img", "check", "-f", "vhdx", restored)
			if o := runTool(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", restored, c.oracle); !strings.Contains(o, "identical") {
				t.Fatalf("qemu-img compare: %s", o)
			}
			if c.vhdx {
				if got, want := vhdiFacts(t, restored), vhdiFacts(t, c.src); !reflect.DeepEqual(got, want) {
					t.Errorf("vhdiinfo of the restore %v, of the source %v", got, want)
				}
				// The page-83 disk ID and physical sector size, which
				// vhdiinfo does not show, through our own reader.
				src, err := vhdxfs.Open(c.src)
				if err != nil {
					t.Fatal(err)
				}
				defer src.Close()
				dst, err := vhdxfs.Open(restored)
				if err != nil {
					t.Fatal(err)
				}
				defer dst.Close()
				si, di := src.Identity(), dst.Identity()
				if si.DiskID != di.DiskID || si.DataWriteGUID != di.DataWriteGUID || si.PhysicalSectorSize != di.PhysicalSectorSize ||
					si.LogicalSectorSize != di.LogicalSectorSize || si.VirtualSize != di.VirtualSize {
					t.Errorf("identity of the restore %+v, of the source %+v", di, si)
				}
			}
			rawOut := filepath.Join(tmp, "raw-"+c.name)
			if _, err := r.Restore(ctx, RestoreOptions{VM: "vm-" + c.name, RP: "latest", To: rawOut, Format: "raw"}); err != nil {
				t.Fatal(err)
			}
			if got, want := sha256File(t, filepath.Join(rawOut, c.name+".raw")), sha256File(t, c.oracle); got != want {
				t.Errorf("raw restore sha256 %s, oracle %s", got, want)
			}
		})
	}
}

// TestHyperVFolder backs up a VM folder laid out like Hyper-V's: the chain
// leaf only (child.avhdx, not its parent base.vhdx), the configuration
// files byte for byte, and the VM GUID taken from <GUID>.vmcx.
func TestHyperVFolder(t *testing.T) {
	td := testdisks.Dir(t)
	vmdir := filepath.Join(t.TempDir(), "MyVM")
	const guid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	vhd := filepath.Join(vmdir, "Virtual Hard Disks")
	cfg := filepath.Join(vmdir, "Virtual Machines")
	for _, d := range []string{vhd, cfg} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, filepath.Join(td, testdisks.BaseVHDX), filepath.Join(vhd, "base.vhdx"))
	copyFile(t, filepath.Join(td, testdisks.ChildAVHDX), filepath.Join(vhd, "child.avhdx"))
	vmcx := filepath.Join(testenv.HyperVSamples(t), "test.vmcx")
	if _, err := os.Stat(vmcx); err != nil {
		testenv.Skip(t, "Hyper-V sample missing: "+vmcx)
	}
	copyFile(t, vmcx, filepath.Join(cfg, strings.ToUpper(guid)+".vmcx"))
	copyFile(t, filepath.Join(testenv.HyperVSamples(t), "test.VMRS"), filepath.Join(cfg, strings.ToUpper(guid)+".VMRS"))

	r, _ := newRepo(t)
	res := backup(t, r, BackupOptions{VM: "MyVM", Sources: []string{vmdir}})
	m := res.Manifest
	if m.VMGUID != guid {
		t.Errorf("VM GUID %s, want %s from the .vmcx name", m.VMGUID, guid)
	}
	if len(m.Disks) != 1 || m.Disks[0].Name != "child" || m.Disks[0].RelDir != "Virtual Hard Disks" {
		t.Fatalf("disks %+v, want only the leaf child", res.Pointer.Disks)
	}
	if len(m.Config) != 2 {
		t.Fatalf("config files %+v, want 2", m.Config)
	}
	out := filepath.Join(t.TempDir(), "restore")
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: guid, RP: "latest", To: out, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	if got, want := sha256File(t, filepath.Join(out, "Virtual Hard Disks", "child.raw")), sha256File(t, filepath.Join(td, testdisks.ChildExpectedRaw)); got != want {
		t.Errorf("chain restore differs from child.expected.raw")
	}
	for _, n := range []string{".vmcx", ".VMRS"} {
		name := filepath.Join("Virtual Machines", strings.ToUpper(guid)+n)
		if sha256File(t, filepath.Join(out, name)) != sha256File(t, filepath.Join(vmdir, name)) {
			t.Errorf("%s not restored byte for byte", name)
		}
	}
	// Single-disk restore: only that disk, no configuration files.
	one := filepath.Join(t.TempDir(), "one")
	res1, err := r.Restore(context.Background(), RestoreOptions{VM: "MyVM", RP: "latest", To: one, Disks: []string{"child"}})
	if err != nil || len(res1.Files) != 1 || filepath.Base(res1.Files[0]) != "child.vhdx" {
		t.Fatalf("single-disk restore: %v %v", res1, err)
	}
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "MyVM", RP: "latest", To: one, Disks: []string{"nosuch"}}); !errors.Is(err, ErrUnknownDisk) {
		t.Errorf("unknown disk: %v", err)
	}
	// A renamed VM (same .vmcx GUID) keeps its history.
	res2 := backup(t, r, BackupOptions{VM: "MyVM-renamed", Sources: []string{vmdir}})
	if res2.Manifest.VMGUID != guid || res2.Manifest.Parent != res.Pointer.ID {
		t.Errorf("renamed VM: guid %s parent %q, want %s and %s", res2.Manifest.VMGUID, res2.Manifest.Parent, guid, res.Pointer.ID)
	}
	if !res2.Manifest.Disks[0].Unchanged || res2.Manifest.BytesRead != res.Manifest.Config[0].Size+res.Manifest.Config[1].Size {
		t.Errorf("unchanged chain was read again: %+v", res2.Pointer.Disks)
	}
}

// TestIncremental changes 4 MiB inside a raw disk and checks that the next
// backup stores little more than that, reuses the unchanged segments, that
// both recovery points restore exactly, and that an unchanged disk is not
// read at all.
func TestIncremental(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	copyFile(t, filepath.Join(td, testdisks.GPTRaw), img)
	v1 := sha256File(t, img)
	r, _ := newRepo(t)
	ctx := context.Background()
	b1 := backup(t, r, BackupOptions{VM: "inc", Sources: []string{img}})

	// Overwrite 4 MiB at 37 MiB (inside the first partition's data) with
	// random bytes, and touch the mtime so the change is visible.
	const change = 4 << 20
	buf := make([]byte, change)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(buf, 37<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v2 := sha256File(t, img)

	b2 := backup(t, r, BackupOptions{VM: "inc", Sources: []string{img}})
	d2 := b2.Manifest.Disks[0]
	if d2.Unchanged || d2.BytesRead == 0 {
		t.Fatalf("changed disk not read: %+v", b2.Pointer.Disks)
	}
	if d2.SegmentsReused == 0 || d2.SegmentsReused >= len(d2.Segments) {
		t.Errorf("segments reused %d of %d: want all but the changed ones", d2.SegmentsReused, len(d2.Segments))
	}
	// The change plus a chunk or two around it (CDC average 1 MiB).
	if b2.Manifest.BytesNew < change || b2.Manifest.BytesNew > 3*change {
		t.Errorf("incremental stored %d new bytes for a %d byte change", b2.Manifest.BytesNew, change)
	}
	// Only the changed segment is chunked.
	var seg2 int64
	for _, e := range flatExtents(&d2) {
		if e.Off/SegmentSize == (37<<20)/SegmentSize {
			seg2 += e.Len
		}
	}
	if d2.BytesChunked < change || d2.BytesChunked > seg2 {
		t.Errorf("chunked %d bytes: want at least the change (%d) and at most its segment's %d", d2.BytesChunked, change, seg2)
	}
	t.Logf("full: new %d; incremental: read %d, chunked %d, new %d, stored %d, segments reused %d/%d",
		b1.Manifest.BytesNew, d2.BytesRead, d2.BytesChunked, b2.Manifest.BytesNew, b2.Manifest.BytesStored, d2.SegmentsReused, len(d2.Segments))

	b3 := backup(t, r, BackupOptions{VM: "inc", Sources: []string{img}})
	if d := b3.Manifest.Disks[0]; !d.Unchanged || d.BytesRead != 0 || b3.Manifest.BytesRead != 0 || b3.Manifest.BytesNew != 0 {
		t.Errorf("unchanged disk: unchanged=%v read %d new %d, want not read", d.Unchanged, d.BytesRead, b3.Manifest.BytesNew)
	}
	// --full reads everything again but stores nothing new.
	b4 := backup(t, r, BackupOptions{VM: "inc", Sources: []string{img}, Full: true})
	if b4.Manifest.BytesRead == 0 || b4.Manifest.BytesNew != 0 || b4.Manifest.Disks[0].SegmentsReused != 0 {
		t.Errorf("express full: read %d new %d reused %d", b4.Manifest.BytesRead, b4.Manifest.BytesNew, b4.Manifest.Disks[0].SegmentsReused)
	}

	// Chunks kept from before the change in a changed segment must give
	// exactly the extents a full re-chunk of the same bytes gives.
	if !reflect.DeepEqual(flatExtents(&b2.Manifest.Disks[0]), flatExtents(&b4.Manifest.Disks[0])) {
		t.Error("incremental extents differ from an express full backup of the same bytes")
	}
	for _, c := range []struct {
		rp   string
		want string
	}{{b1.Pointer.ID, v1}, {b2.Pointer.ID, v2}, {b3.Pointer.ID, v2}, {b4.Pointer.ID, v2}} {
		out := filepath.Join(dir, "out-"+c.rp)
		if _, err := r.Restore(ctx, RestoreOptions{VM: "inc", RP: c.rp, To: out, Format: "raw"}); err != nil {
			t.Fatal(err)
		}
		if got := sha256File(t, filepath.Join(out, "disk.raw")); got != c.want {
			t.Errorf("rp %s restores to %s, want %s", c.rp, got, c.want)
		}
	}
	ps, err := r.ListRecoveryPoints("inc")
	if err != nil || len(ps) != 4 {
		t.Fatalf("list: %d points, %v", len(ps), err)
	}
	rep, err := r.Check(ctx, CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %+v %v", rep, err)
	}
}

// TestIncrementalVHDX writes into a VHDX copy with qemu-io (which changes
// its DataWriteGuid), so the disk is read again but unchanged segments are
// reused.
func TestIncrementalVHDX(t *testing.T) {
	testenv.NeedTools(t, "qemu-io", "qemu-img")
	td := testdisks.Dir(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "gpt.vhdx")
	copyFile(t, filepath.Join(td, testdisks.GPTVHDX), img)
	r, _ := newRepo(t)
	backup(t, r, BackupOptions{VM: "v", Sources: []string{img}})
	runTool(t, "qemu-io", "-f", "vhdx", "-c", "write -P 0xa5 40M 2M", img)
	b2 := backup(t, r, BackupOptions{VM: "v", Sources: []string{img}})
	d := b2.Manifest.Disks[0]
	if d.Unchanged || d.SegmentsReused == 0 || d.SegmentsReused >= len(d.Segments) {
		t.Errorf("unchanged=%v reused %d/%d", d.Unchanged, d.SegmentsReused, len(d.Segments))
	}
	if d.BytesNew > 8<<20 {
		t.Errorf("2 MiB pattern write stored %d new bytes", d.BytesNew)
	}
	oracle := filepath.Join(dir, "oracle.raw")
	runTool(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", img, oracle)
	out := filepath.Join(dir, "out")
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "v", RP: "latest", To: out}); err != nil {
		t.Fatal(err)
	}
	if o := runTool(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", filepath.Join(out, "gpt.vhdx"), oracle); !strings.Contains(o, "identical") {
		t.Fatal(o)
	}
}

// TestBadSources: each bad input fails with a wrapped error and leaves no
// recovery point.
func TestBadSources(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	notVHDX := filepath.Join(dir, "garbage.vhdx")
	os.WriteFile(notVHDX, []byte("this is not a vhdx file at all"), 0o644)
	trunc := filepath.Join(dir, "trunc.vhdx")
	b, _ := os.ReadFile(filepath.Join(td, testdisks.GPTVHDX))
	os.WriteFile(trunc, b[:300<<10], 0o644)
	r, _ := newRepo(t)
	for _, src := range []string{notVHDX, trunc, filepath.Join(td, testdisks.OrphanAVHDX), filepath.Join(dir, "missing.raw")} {
		_, err := r.Backup(context.Background(), BackupOptions{VM: "bad", Sources: []string{src}})
		if err == nil || !strings.HasPrefix(err.Error(), "engine: ") {
			t.Errorf("backup %s: err %v, want an engine error", filepath.Base(src), err)
		} else {
			t.Logf("%s: %v", filepath.Base(src), err)
		}
	}
	if _, err := r.ListRecoveryPoints("bad"); err == nil {
		ps, _ := r.ListRecoveryPoints("bad")
		if len(ps) != 0 {
			t.Errorf("failed backups listed %d recovery points", len(ps))
		}
	}
	if _, err := r.LoadManifest(context.Background(), "nope", "latest"); !errors.Is(err, ErrUnknownVM) {
		t.Errorf("unknown VM: %v", err)
	}
}

// TestHooks: a successful pre-hook gives an application-consistent
// recovery point, a failed one a crash-consistent one (or a failure with
// RequireAppConsistent), and the post-hook runs in every case.
func TestHooks(t *testing.T) {
	td := testdisks.Dir(t)
	dir := t.TempDir()
	r, _ := newRepo(t)
	post := filepath.Join(dir, "post")
	src := []string{filepath.Join(td, testdisks.NoPartRaw)}
	res := backup(t, r, BackupOptions{VM: "h", Sources: src, PreHook: "true", PostHook: "echo ok >> " + post})
	if res.Manifest.Consistency != AppConsistent {
		t.Errorf("consistency %s", res.Manifest.Consistency)
	}
	res = backup(t, r, BackupOptions{VM: "h", Sources: src, PreHook: "exit 3", PostHook: "echo ok >> " + post})
	if res.Manifest.Consistency != CrashConsistent {
		t.Errorf("consistency %s", res.Manifest.Consistency)
	}
	_, err := r.Backup(context.Background(), BackupOptions{VM: "h", Sources: src, PreHook: "exit 3", PostHook: "echo ok >> " + post, RequireAppConsistent: true})
	if !errors.Is(err, ErrHookFailed) {
		t.Errorf("required app consistency: %v", err)
	}
	b, _ := os.ReadFile(post)
	if n := strings.Count(string(b), "ok"); n != 3 {
		t.Errorf("post-hook ran %d times, want 3", n)
	}
	ps, _ := r.ListRecoveryPoints("h")
	if len(ps) != 2 {
		t.Errorf("%d recovery points, want 2", len(ps))
	}
}

// TestForgetPrune: forgetting a recovery point and pruning frees its
// unique data, while the remaining point still restores exactly and the
// repository checks clean.
func TestForgetPrune(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	ctx := context.Background()
	a := backup(t, r, BackupOptions{VM: "a", Sources: []string{filepath.Join(td, testdisks.GPTRaw)}})
	backup(t, r, BackupOptions{VM: "b", Sources: []string{filepath.Join(td, testdisks.NoPartRaw)}})
	rep, err := r.Prune(ctx, PruneOptions{})
	if err != nil || rep.GC.DeletedChunks != 0 {
		t.Fatalf("prune with nothing forgotten: %+v %v", rep, err)
	}
	if _, err := r.Forget(ForgetOptions{VM: "a", IDs: []string{a.Pointer.ID}}); err != nil {
		t.Fatal(err)
	}
	rep, err = r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RecoveryPoints != 1 || rep.GC.DeletedChunks == 0 || rep.GC.FreedBytes < a.Manifest.BytesStored/2 {
		t.Errorf("prune after forget: %+v (a stored %d)", rep, a.Manifest.BytesStored)
	}
	ids := []chunkstore.ID{chunkstore.ID(a.Manifest.Disks[0].Segments[0].Extents[0].ID)}
	if has, _ := r.store.Has(ctx, ids); has[0] {
		t.Error("a chunk only the forgotten point used survived the prune")
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := r.Restore(ctx, RestoreOptions{VM: "b", RP: "latest", To: out, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	if sha256File(t, filepath.Join(out, "nopart.raw")) != sha256File(t, filepath.Join(td, testdisks.NoPartRaw)) {
		t.Error("remaining point damaged by prune")
	}
	if c, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil || !c.OK() {
		t.Errorf("check after prune: %+v %v", c, err)
	}
}

// TestIncrementalPrefix: in a changed segment of dense data, the chunks
// before the change, and those after it once a cut falls on an old chunk
// boundary again, are kept without going through the chunkstore, and the
// result is exactly what a full re-chunk gives.
func TestIncrementalPrefix(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "dense.raw")
	data := make([]byte, 48<<20)
	rng := rand.New(rand.NewPCG(9, 10))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	os.WriteFile(img, data, 0o644)
	r, _ := newRepo(t)
	backup(t, r, BackupOptions{VM: "p", Sources: []string{img}})
	// 1 MiB changed 8 MiB into the third segment.
	copy(data[40<<20:41<<20], bytes.Repeat([]byte{0x5a}, 1<<20))
	os.WriteFile(img, data, 0o644)
	inc := backup(t, r, BackupOptions{VM: "p", Sources: []string{img}})
	full := backup(t, r, BackupOptions{VM: "p", Sources: []string{img}, Full: true})
	d := inc.Manifest.Disks[0]
	// Chunks are 2 MiB at most: the change (1 MiB) plus the old chunks it
	// touches, far less than the 8 MiB from the change to the segment end.
	if d.SegmentsReused != 2 || d.BytesChunked < 1<<20 || d.BytesChunked > 5<<20 {
		t.Errorf("reused %d segments, chunked %d bytes: want 2 and only the changed chunks (1..5 MiB)", d.SegmentsReused, d.BytesChunked)
	}
	if full.Manifest.Disks[0].BytesChunked != 48<<20 {
		t.Errorf("express full chunked %d", full.Manifest.Disks[0].BytesChunked)
	}
	if !reflect.DeepEqual(flatExtents(&d), flatExtents(&full.Manifest.Disks[0])) {
		t.Error("incremental extents differ from a full re-chunk")
	}
	out := filepath.Join(dir, "out")
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "p", RP: inc.Pointer.ID, To: out, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(out, "dense.raw"))
	if !bytes.Equal(got, data) {
		t.Error("restore differs")
	}
	t.Logf("incremental chunked %d of %d bytes, new %d", d.BytesChunked, len(data), d.BytesNew)
}

// TestCheckFindsLoss: with every shard of the data gone, check reports the
// store damage, and after --repair drops the lost chunks from the index,
// the recovery point that references them (here its manifest is lost too).
func TestCheckFindsLoss(t *testing.T) {
	td := testdisks.Dir(t)
	r, dir := newRepo(t)
	ctx := context.Background()
	backup(t, r, BackupOptions{VM: "c", Sources: []string{filepath.Join(td, testdisks.NoPartRaw)}})
	if rep, err := r.Check(ctx, CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("clean repository: %+v %v", rep, err)
	}
	n := 0
	filepath.WalkDir(filepath.Join(dir, "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			os.Remove(p)
			n++
		}
		return nil
	})
	if n == 0 {
		t.Fatal("no shard files found")
	}
	rep, err := r.Check(ctx, CheckOptions{})
	if err != nil || rep.OK() {
		t.Fatalf("check after losing all shards: %+v %v", rep, err)
	}
	rep, err = r.Check(ctx, CheckOptions{Repair: true})
	if err != nil || rep.OK() || len(rep.Problems) != 1 || rep.Problems[0].Error == "" {
		t.Fatalf("check --repair after loss: %+v %v", rep, err)
	}
	t.Logf("problem: %+v", rep.Problems[0])
}
