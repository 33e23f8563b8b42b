//go:build !windows

// internal/testdisks locks its build with syscall.Flock, which Windows
// lacks; the fixtures are built on Linux anyway.

package part

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// TestSharedFixtures reads the project's shared fixture disks (built by
// testdata/mkdisks.sh) through vdisk.OpenRaw and checks every partition
// against the fixture's own list and, for partitioned disks, against mmls;
// and that each volume's file-system signature is where we say it starts.
func TestSharedFixtures(t *testing.T) {
	testenv.NeedTools(t, "mmls")
	dir := testdisks.Dir(t)
	fsName := map[string]string{testdisks.FSExt4: "ext2/3/4", testdisks.FSNTFS: "NTFS", testdisks.FSFAT32: "FAT32"}
	for _, img := range testdisks.Images {
		var want []testdisks.Partition
		for _, p := range testdisks.Partitions {
			if p.Image == img.Name {
				want = append(want, p)
			}
		}
		if len(want) == 0 {
			continue // VHDX-only fixtures without guest partitions
		}
		t.Run(img.Raw, func(t *testing.T) {
			path := filepath.Join(dir, img.Raw)
			d, err := vdisk.OpenRaw(path)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			tb, err := Read(d, d.Size(), int(d.Identity().LogicalSectorSize))
			if err != nil {
				t.Fatal(err)
			}
			if len(tb.Warnings) != 0 {
				t.Errorf("warnings: %q", tb.Warnings)
			}
			if len(tb.Partitions) != len(want) {
				t.Fatalf("ours %+v\nfixture %+v", tb.Partitions, want)
			}
			for i, w := range want {
				q := tb.Partitions[i]
				if q.Index != w.Num || q.Start != w.Start*512 || q.Size != w.Sectors*512 ||
					!strings.EqualFold(q.Type, w.Type) || q.IsContainer() != (w.FS == "" && w.Num != 0) {
					t.Errorf("p%d: ours %+v, fixture %+v", w.Num, q, w)
				}
				if w.Num == 0 && q.TypeName != fsName[w.FS] {
					t.Errorf("p0 TypeName %q, fixture FS %q", q.TypeName, w.FS)
				}
				if w.FS != "" {
					head := make([]byte, 2048)
					if _, err := q.Section(d).ReadAt(head, 0); err != nil {
						t.Fatal(err)
					}
					if got := fsAtZero(head, true); got != fsName[w.FS] {
						t.Errorf("p%d: file system at start %q, fixture %q", w.Num, got, w.FS)
					}
				}
			}
			if tb.Scheme == "none" {
				return // mmls reports no table for a whole-disk file system
			}
			var data []Partition
			for _, q := range tb.Partitions {
				if !q.IsContainer() {
					data = append(data, q)
				}
			}
			mm := mmls(t, path, 512)
			if len(mm) != len(data) {
				t.Fatalf("mmls %+v\nours %+v", mm, data)
			}
			for i, m := range mm {
				if data[i].Start != m.Start*512 || data[i].Size != m.Len*512 {
					t.Errorf("mmls %+v; ours %+v", m, data[i])
				}
			}
		})
	}
}
