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

// TestExcludePagefile puts a 3 MiB pagefile.sys into the NTFS partition
// of a copy of gpt.raw (with ntfscp), backs up with ExcludePagefile and
// checks the raw restore against an oracle found by content: the source
// image with every 4 KiB block of the page file's (random, so unique)
// content zeroed.
func TestExcludePagefile(t *testing.T) {
	testenv.NeedTools(t, "ntfscp")
	td := testdisks.Dir(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "win.raw")
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
	want := bytes.Clone(image)
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

	r, _ := newRepo(t)
	res := backup(t, r, BackupOptions{VM: "win", Sources: []string{img}, ExcludePagefile: true})
	d := res.Manifest.Disks[0]
	if len(d.Excluded) != 1 || !strings.Contains(d.Excluded[0], "pagefile.sys") || d.ExcludedBytes < int64(len(pf)) {
		t.Errorf("excluded %v (%d bytes)", d.Excluded, d.ExcludedBytes)
	}
	out := filepath.Join(dir, "out")
	if _, err := r.Restore(context.Background(), RestoreOptions{VM: "win", RP: "latest", To: out, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(out, "win.raw"))
	if !bytes.Equal(got, want) {
		for off, n := 0, 0; off < len(got) && n < 5; off += 4096 {
			if !bytes.Equal(got[off:off+4096], want[off:off+4096]) {
				n++
				t.Logf("differs at %d (zero got %v want %v, orig zero %v)", off, isZero(got[off:off+4096]), isZero(want[off:off+4096]), isZero(image[off:off+4096]))
			}
		}
		t.Logf("excluded %v", d.Excluded)
		t.Fatal("restore with excluded page file differs from the oracle")
	}
}
