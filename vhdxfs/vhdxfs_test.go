package vhdxfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// TestFixtureGuestFiles goes through the whole stack — format detection,
// VHDX (or raw) reader, partition table, filesystem detection, guest
// filesystem — and checks every manifest entry: path, kind, size, sha256 and
// symlink target, and that every listed name is in the manifest.
func TestFixtureGuestFiles(t *testing.T) {
	dir := testdisks.Dir(t)
	man := testdisks.Manifest(t)
	for _, img := range []string{testdisks.GPTVHDX, testdisks.MBRVHDX, testdisks.NoPartRaw} {
		t.Run(img, func(t *testing.T) {
			d, err := Open(filepath.Join(dir, img))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			vols, _, err := Volumes(d)
			if err != nil {
				t.Fatal(err)
			}
			want := map[int]testdisks.Partition{}
			for _, p := range testdisks.Partitions {
				if p.Image == img && p.FS != "" {
					want[p.Num] = p
				}
			}
			if len(vols) != len(want) {
				t.Fatalf("got %d volumes, want %d", len(vols), len(want))
			}
			for _, v := range vols {
				wp, ok := want[v.Partition.Index]
				if !ok {
					t.Fatalf("unexpected volume p%d", v.Partition.Index)
				}
				if v.Partition.Start != wp.Start*512 || v.FSType != wp.FS {
					t.Errorf("p%d: start %d fs %q, want %d %q", wp.Num, v.Partition.Start, v.FSType, wp.Start*512, wp.FS)
				}
				checkVolume(t, v, img, man)
			}
		})
	}
}

func checkVolume(t *testing.T, v Volume, img string, man []testdisks.Entry) {
	fsys, err := v.OpenFS()
	if err != nil {
		t.Fatalf("p%d: %v", v.Partition.Index, err)
	}
	defer fsys.Close()
	listed := map[string]bool{}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			t.Errorf("p%d: readdir %s: %v", v.Partition.Index, dir, err)
			return
		}
		for _, e := range ents {
			p := e.Name
			if dir != "." {
				p = dir + "/" + e.Name
			}
			if testdisks.FSMetadata(p) || (dir == "." && e.Name == "System Volume Information") {
				continue
			}
			listed[p] = true
			if e.IsDir() {
				walk(p)
			}
		}
	}
	walk(".")
	n := 0
	for _, e := range man {
		if e.Image != img || e.Part != v.Partition.Index {
			continue
		}
		n++
		if !listed[e.Path] {
			t.Errorf("p%d: %s not listed", e.Part, e.Path)
			continue
		}
		delete(listed, e.Path)
		fi, err := fsys.Stat(e.Path)
		if err != nil {
			t.Errorf("p%d: stat %s: %v", e.Part, e.Path, err)
			continue
		}
		switch e.Kind {
		case 'd':
			if !fi.IsDir() {
				t.Errorf("p%d: %s: not a directory", e.Part, e.Path)
			}
		case 'l':
			if fi.Mode&fs.ModeSymlink == 0 {
				t.Errorf("p%d: %s: not a symlink", e.Part, e.Path)
			} else if target, err := fsys.Readlink(e.Path); err != nil || target != e.Target {
				t.Errorf("p%d: %s: target %q, %v; want %q", e.Part, e.Path, target, err, e.Target)
			}
		case 'f':
			f, err := fsys.Open(e.Path)
			if err != nil {
				t.Errorf("p%d: open %s: %v", e.Part, e.Path, err)
				continue
			}
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(f, 0, f.Size())); err != nil {
				t.Errorf("p%d: read %s: %v", e.Part, e.Path, err)
			}
			f.Close()
			if f.Size() != e.Size || hex.EncodeToString(h.Sum(nil)) != e.SHA256 {
				t.Errorf("p%d: %s: size %d sha %x, want %d %s", e.Part, e.Path, f.Size(), h.Sum(nil), e.Size, e.SHA256)
			}
		}
	}
	if n == 0 {
		t.Errorf("p%d: manifest has no entries for this volume", v.Partition.Index)
	}
	for p := range listed {
		t.Errorf("p%d: %s listed but not in the manifest", v.Partition.Index, p)
	}
}

func TestOpenRefusesForeignAndBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	qcow := write("a.img", append([]byte("QFI\xfb"), make([]byte, 1000)...))
	if _, err := Open(qcow); !errors.Is(err, ErrUnsupported) {
		t.Errorf("qcow2: err = %v, want ErrUnsupported", err)
	}
	fake := write("b.vhdx", make([]byte, 4096))
	if _, err := Open(fake); !errors.Is(err, vdisk.ErrCorrupt) {
		t.Errorf("zeroed .vhdx: err = %v, want ErrCorrupt", err)
	}
	empty := write("c.raw", nil)
	if _, err := Open(empty); err == nil {
		t.Error("empty file opened")
	}
	if _, err := Open(dir); err == nil {
		t.Error("directory opened")
	}
	trunc := write("d.vhdx", append([]byte("vhdxfile"), make([]byte, 100)...))
	if _, err := Open(trunc); err == nil {
		t.Error("truncated VHDX opened")
	}
}
