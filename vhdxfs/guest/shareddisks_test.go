package guest

import (
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/vhdxfs/part"
)

// TestSharedDisks opens every partition of the shared fixtures (gpt.raw,
// mbr.raw, nopart.raw), found through vhdxfs/part, and checks each manifest
// entry: kind, size, sha256, symlink target; and that we list nothing the
// manifest lacks apart from filesystem metadata (lost+found).
func TestSharedDisks(t *testing.T) {
	dir := testdisks.Dir(t)
	for _, img := range testdisks.Images[:3] {
		t.Run(img.Raw, func(t *testing.T) {
			r, size := imageFile(t, filepath.Join(dir, img.Raw))
			tbl, err := part.Read(r, size, 512)
			if err != nil {
				t.Fatalf("part.Read: %v", err)
			}
			for _, want := range testdisks.Partitions {
				if want.Image != img.Name || want.FS == "" {
					continue
				}
				var p *part.Partition
				for i := range tbl.Partitions {
					if tbl.Partitions[i].Index == want.Num {
						p = &tbl.Partitions[i]
					}
				}
				if p == nil || p.Start != want.Start*512 {
					t.Errorf("partition %d not found at sector %d: %+v", want.Num, want.Start, p)
					continue
				}
				t.Run(fmt.Sprintf("p%d", want.Num), func(t *testing.T) {
					checkManifestVolume(t, p.Section(r), p.Size, want, testdisks.ManifestFor(t, img.Name, want.Num))
				})
			}
		})
	}
}

func checkManifestVolume(t *testing.T, r io.ReaderAt, size int64, want testdisks.Partition, manifest []testdisks.Entry) {
	g, err := Open(r, size)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer g.Close()
	if g.Type() != want.FS || g.Label() != want.Label {
		t.Errorf("Type/Label = %q/%q, want %q/%q", g.Type(), g.Label(), want.FS, want.Label)
	}
	if len(manifest) == 0 {
		t.Fatalf("no manifest entries")
	}
	inManifest := map[string]bool{}
	for _, e := range manifest {
		inManifest[e.Path] = true
		fi, err := g.Stat(e.Path)
		if err != nil {
			t.Errorf("%s: %v", e.Path, err)
			continue
		}
		switch e.Kind {
		case 'd':
			if !fi.IsDir() {
				t.Errorf("%s: mode %v, want directory", e.Path, fi.Mode)
			}
		case 'l':
			tg, err := g.Readlink(e.Path)
			if fi.Mode&fs.ModeSymlink == 0 || err != nil || tg != e.Target {
				t.Errorf("%s: symlink %v -> %q (%v), want -> %q", e.Path, fi.Mode, tg, err, e.Target)
			}
		case 'f':
			if !fi.Mode.IsRegular() || fi.Size != e.Size {
				t.Errorf("%s: mode %v size %d, want regular, %d", e.Path, fi.Mode, fi.Size, e.Size)
				continue
			}
			f, err := g.Open(e.Path)
			if err != nil {
				t.Errorf("open %s: %v", e.Path, err)
				continue
			}
			if h := hashReader(io.NewSectionReader(f, 0, f.Size())); h != e.SHA256 {
				t.Errorf("%s: sha256 %s, want %s", e.Path, h, e.SHA256)
			}
			f.Close()
		}
	}
	if inManifest[testdisks.ADSFile] && inManifest["hardlink-to-ads.txt"] {
		a, _ := g.Stat(testdisks.ADSFile)
		b, _ := g.Stat("hardlink-to-ads.txt")
		if a.Ino != b.Ino || a.Nlink != 2 {
			t.Errorf("hard link: Ino %d/%d Nlink %d, want one file with 2 links", a.Ino, b.Ino, a.Nlink)
		}
	}
	err = fs.WalkDir(IOFS(g), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		if p != "." && !inManifest[p] && !testdisks.FSMetadata(p) {
			t.Errorf("%s: listed, not in the manifest", p)
		}
		if strings.Contains(p, ":") {
			t.Errorf("%s: alternate data stream listed", p)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
