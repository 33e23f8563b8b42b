package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
)

// pagefileImage puts a 3 MiB pagefile.sys of random (so unique) content
// into the NTFS partition of a copy of gpt.raw (with ntfscp) and returns
// the image's path, its bytes, and the oracle of a backup that leaves the
// page file out: the image with every 4 KiB block of the page file's
// content zeroed, found by content.
func pagefileImage(t *testing.T, dir string) (img string, image, want []byte) {
	t.Helper()
	testenv.NeedTools(t, "ntfscp")
	td := testdisks.Dir(t)
	img = filepath.Join(dir, "win.raw")
	copyFile(t, filepath.Join(td, testdisks.GPTRaw), img)
	const partStart, partLen = 83968 * 512, 163840 * 512 // NTFSVOL, see testdisks.Partitions
	image, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	part := filepath.Join(dir, "part.img")
	os.WriteFile(part, image[partStart:partStart+partLen], 0o644)
	pf := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range pf {
		pf[i] = byte(rng.Uint32())
	}
	pfPath := filepath.Join(dir, "pf")
	os.WriteFile(pfPath, pf, 0o644)
	runTool(t, "ntfscp", "-f", part, pfPath, "pagefile.sys")
	pb, _ := os.ReadFile(part)
	copy(image[partStart:], pb)
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}

	// Oracle: zero every 4 KiB block of the image equal to a block of pf.
	blocks := map[[32]byte]bool{}
	for i := 0; i < len(pf); i += 4096 {
		blocks[sha256.Sum256(pf[i:i+4096])] = true
	}
	want = bytes.Clone(image)
	zeroed := 0
	for off := 0; off+4096 <= len(want); off += 4096 {
		if blocks[sha256.Sum256(want[off:off+4096])] {
			clear(want[off : off+4096])
			zeroed++
		}
	}
	if zeroed != len(pf)/4096 {
		t.Fatalf("found %d page file blocks in the image, want %d", zeroed, len(pf)/4096)
	}
	return img, image, want
}

// restoreRaw restores the latest point of vm as raw and returns its bytes.
func restoreRaw(t *testing.T, r *Repo, vm, name string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: vm, RP: "latest", To: out, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, name))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func diffBlocks(t *testing.T, got, want, image []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("restored %d bytes, want %d", len(got), len(want))
	}
	for off, n := 0, 0; off < len(got) && n < 5; off += 4096 {
		if !bytes.Equal(got[off:off+4096], want[off:off+4096]) {
			n++
			t.Logf("differs at %d (zero got %v want %v, orig zero %v)", off, isZero(got[off:off+4096]), isZero(want[off:off+4096]), isZero(image[off:off+4096]))
		}
	}
}

// TestExcludePagefile: by default a backup leaves the page file's clusters
// out, records the file in the manifest, and the raw restore equals the
// oracle (page file blocks zero, everything else the source's bytes).
func TestExcludePagefile(t *testing.T) {
	dir := t.TempDir()
	img, image, want := pagefileImage(t, dir)
	r, _ := newRepo(t)
	res := backup(t, r, BackupOptions{VM: "win", Sources: []string{img}})
	d := res.Manifest.Disks[0]
	if len(d.ExcludedFiles) != 1 {
		t.Fatalf("excluded %+v", d.ExcludedFiles)
	}
	f := d.ExcludedFiles[0]
	if !strings.EqualFold(f.Path, "pagefile.sys") || f.Volume != 2 || f.Size != 3<<20 || f.BytesExcluded < 3<<20 || d.ExcludedBytes != f.BytesExcluded {
		t.Errorf("excluded %+v (disk total %d bytes)", f, d.ExcludedBytes)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings: %v", res.Warnings)
	}
	// The record survives the manifest round trip (rp show reads it).
	m, err := r.LoadManifest(context.Background(), "win", "latest")
	if err != nil {
		t.Fatal(err)
	}
	if v := m.View().DiskDetails[0]; len(v.ExcludedFiles) != 1 || v.ExcludedFiles[0] != f {
		t.Errorf("manifest view excluded %+v, want %+v", v.ExcludedFiles, f)
	}
	if got := restoreRaw(t, r, "win", "win.raw"); !bytes.Equal(got, want) {
		diffBlocks(t, got, want, image)
		t.Fatal("restore with excluded page file differs from the oracle")
	}
}

// TestKeepPagefile: with KeepPagefile the restore equals the source
// exactly, also when the previous backup of the unchanged disk left the
// page file out (the disk must be read again, not reused).
func TestKeepPagefile(t *testing.T) {
	dir := t.TempDir()
	img, image, _ := pagefileImage(t, dir)
	r, _ := newRepo(t)
	backup(t, r, BackupOptions{VM: "win", Sources: []string{img}})
	res := backup(t, r, BackupOptions{VM: "win", Sources: []string{img}, KeepPagefile: true})
	d := res.Manifest.Disks[0]
	if d.Unchanged || len(d.ExcludedFiles) != 0 || d.ExcludedBytes != 0 {
		t.Errorf("keep-pagefile backup: unchanged %v, excluded %+v (%d bytes)", d.Unchanged, d.ExcludedFiles, d.ExcludedBytes)
	}
	if got := restoreRaw(t, r, "win", "win.raw"); !bytes.Equal(got, image) {
		diffBlocks(t, got, image, image)
		t.Fatal("restore with --keep-pagefile differs from the source")
	}
	// Back to the default with the disk unchanged: it is not read at all,
	// so the point is the previous one's content, page file included, and
	// its manifest says nothing was left out.
	res = backup(t, r, BackupOptions{VM: "win", Sources: []string{img}})
	if d := res.Manifest.Disks[0]; !d.Unchanged || len(d.ExcludedFiles) != 0 {
		t.Errorf("default backup of the unchanged disk: unchanged %v, excluded %+v", d.Unchanged, d.ExcludedFiles)
	}
	if got := restoreRaw(t, r, "win", "win.raw"); !bytes.Equal(got, image) {
		t.Fatal("unchanged disk reused from a keep-pagefile backup differs from the source")
	}
}

// TestPagefileWarning: a disk whose partition table cannot be read (both
// GPT headers destroyed) is backed up whole: the page file's data is kept,
// the backup succeeds, and the reason is a warning in the result, the
// manifest and the job record.
func TestPagefileWarning(t *testing.T) {
	dir := t.TempDir()
	img, image, _ := pagefileImage(t, dir)
	clear(image[512:1024])        // primary GPT header (LBA 1)
	clear(image[len(image)-512:]) // backup GPT header (last LBA)
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}
	r, dir2 := newRepo(t)
	res := backup(t, r, BackupOptions{VM: "win", Sources: []string{img}})
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "win: page files not looked for") {
		t.Fatalf("warnings %q", res.Warnings)
	}
	if d := res.Manifest.Disks[0]; len(d.ExcludedFiles) != 0 || len(d.Warnings) != 1 || len(res.Manifest.Warnings) != 1 {
		t.Errorf("disk excluded %+v, warnings %q / %q", d.ExcludedFiles, d.Warnings, res.Manifest.Warnings)
	}
	jobs, err := ListJobs(dir2)
	if err != nil || len(jobs) != 1 || len(jobs[0].Warnings) != 1 || jobs[0].Result != JobOK {
		t.Errorf("job %+v %v", jobs, err)
	}
	if got := restoreRaw(t, r, "win", "win.raw"); !bytes.Equal(got, image) {
		t.Fatal("disk backed up whole after a warning differs from the source")
	}
}
