package vhdx

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// TestReaderTestdisks reads every shared fixture disk (internal/testdisks)
// through the reader and compares it with its raw oracle: qemu-made dynamic
// and fixed disks, the dirty-log disk (oracle: qemu after check -r all) and
// the differencing chain (oracle: libvhdi with ZERO blocks patched).
func TestReaderTestdisks(t *testing.T) {
	dir := testdisks.Dir(t)
	pairs := []struct{ vhdx, raw string }{
		{testdisks.GPTVHDX, testdisks.GPTRaw},
		{testdisks.MBRVHDX, testdisks.MBRRaw},
		{testdisks.DirtyVHDX, testdisks.DirtyExpectedRaw},
		{testdisks.BaseVHDX, testdisks.BaseRaw},
		{testdisks.ChildAVHDX, testdisks.ChildExpectedRaw},
	}
	for _, p := range pairs {
		t.Run(p.vhdx, func(t *testing.T) {
			d := rdtOpen(t, filepath.Join(dir, p.vhdx))
			raw, err := os.ReadFile(filepath.Join(dir, p.raw))
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != int64(len(raw)) {
				t.Fatalf("size %d, raw %d", d.Size(), len(raw))
			}
			if got, want := rdtSHA(t, d, d.Size()), rdtFileSHA(t, filepath.Join(dir, p.raw)); got != want {
				t.Fatalf("sha256 %s, oracle %s", got, want)
			}
			rdtCheckAllocated(t, d, raw)
			switch p.vhdx {
			case testdisks.DirtyVHDX:
				if !d.Info().Log.Replayed {
					t.Error("dirty.vhdx: log not replayed")
				}
			case testdisks.MBRVHDX:
				if !d.Identity().Fixed {
					t.Error("mbr-fixed.vhdx: not fixed")
				}
			case testdisks.ChildAVHDX:
				id := d.Identity()
				if id.ChainLength != 2 || filepath.Base(id.ParentPath) != testdisks.BaseVHDX {
					t.Errorf("identity %+v", id)
				}
				rdtCheckChildStates(t, d)
			}
		})
	}
	t.Run(testdisks.OrphanAVHDX, func(t *testing.T) {
		_, err := Open(filepath.Join(dir, testdisks.OrphanAVHDX))
		var pnf *ParentNotFoundError
		if !errors.As(err, &pnf) || !errors.Is(err, fs.ErrNotExist) ||
			!strings.Contains(err.Error(), "parent not found: "+testdisks.OrphanRelativePath+" (tried "+filepath.Join(dir, "missing-parent.vhdx")) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run(testdisks.BadLinkAVHDX, func(t *testing.T) {
		_, err := Open(filepath.Join(dir, testdisks.BadLinkAVHDX))
		if err == nil || !errors.Is(err, vdisk.ErrCorrupt) || !strings.Contains(err.Error(), "parent_linkage") {
			t.Fatalf("err %v", err)
		}
	})
}

// rdtCheckChildStates compares the child's BAT with the fixture's table.
func rdtCheckChildStates(t *testing.T, d *Disk) {
	l := d.layers[0]
	if int(l.g.nb) != len(testdisks.ChildBlockStates) {
		t.Fatalf("child has %d blocks, fixture says %d", l.g.nb, len(testdisks.ChildBlockStates))
	}
	for b, want := range testdisks.ChildBlockStates {
		if got := batState(l.entry(int64(b))); got != want {
			t.Errorf("block %d state %d, want %d", b, got, want)
		}
	}
}
