//go:build unix

package vhdx

import (
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
)

// Round trips: a VHDX opened by the reader is synthesized again from its
// identity, content and allocation; the result must hold the same bytes
// (qemu-img compare against the raw oracle and against the original file),
// carry the same identifier (vhdiinfo on both files) and read back through
// the reader with the same identity.

// synthVhdiIdentifier is the "Identifier" vhdiinfo prints (DataWriteGuid).
func synthVhdiIdentifier(t *testing.T, path string) string {
	t.Helper()
	out := synthExec(t, "vhdiinfo", path)
	m := regexp.MustCompile(`Identifier\s*:\s*(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("vhdiinfo %s: no identifier:\n%s", path, out)
	}
	return m[1]
}

// synthRoundTrip opens orig, synthesizes it, checks the output against raw
// with every oracle and returns the output path.
func synthRoundTrip(t *testing.T, orig, raw string, tc synthToolCase) string {
	t.Helper()
	d, err := Open(orig)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id := d.Identity()
	tc.raw, tc.src, tc.alloc, tc.id = raw, d, d.Allocated(), id
	out := synthCheckTools(t, tc)

	if id.LogicalSectorSize == 512 && id.ChainLength <= 1 && !d.Info().Log.Replayed {
		// qemu cannot open differencing files, nor read-only ones with a
		// log to replay; compare with the original directly otherwise.
		got := synthExec(t, "qemu-img", "compare", "-f", "vhdx", "-F", "vhdx", out, orig)
		if !strings.Contains(got, "Images are identical") {
			t.Fatalf("compare with the original: %s", got)
		}
	}
	if a, b := synthVhdiIdentifier(t, out), synthVhdiIdentifier(t, orig); a != b && id.ChainLength <= 1 {
		t.Fatalf("identifier %s, original %s", a, b)
	}

	d2, err := Open(out)
	if err != nil {
		t.Fatalf("reader cannot open the synthesized file: %v", err)
	}
	defer d2.Close()
	id2 := d2.Identity()
	wantBS := id.BlockSize
	if tc.opts.BlockSize != 0 {
		wantBS = tc.opts.BlockSize
	}
	if id2.DiskID != id.DiskID || id2.DataWriteGUID != id.DataWriteGUID || id2.VirtualSize != id.VirtualSize ||
		id2.LogicalSectorSize != id.LogicalSectorSize || id2.PhysicalSectorSize != id.PhysicalSectorSize ||
		id2.BlockSize != wantBS || id2.Fixed || id2.ChainLength != 1 {
		t.Fatalf("identity after the round trip %+v, original %+v", id2, id)
	}
	return out
}

// TestSynthRoundTripTestdisks synthesizes every shared fixture: qemu-made
// dynamic and fixed disks, the dirty-log disk (replayed by the reader), the
// differencing chain (flattened) and the sparse raw image.
func TestSynthRoundTripTestdisks(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "vhdiinfo", "fls")
	dir := testdisks.Dir(t)
	for _, img := range testdisks.Images {
		t.Run(img.Name, func(t *testing.T) {
			orig, raw := filepath.Join(dir, img.Name), filepath.Join(dir, img.Raw)
			fls := map[int64]string{}
			for _, p := range testdisks.Partitions {
				if p.Image == img.Name && p.FS != "" {
					fls[p.Start] = "" // any listing: the volume must be readable
				}
			}
			tc := synthToolCase{fls: fls}
			if img.Format == "raw" {
				tc.raw = raw
				synthCheckTools(t, tc)
				return
			}
			synthRoundTrip(t, orig, raw, tc)
		})
	}
	// A different block size than the source's.
	t.Run(testdisks.GPTVHDX+"-32M", func(t *testing.T) {
		synthRoundTrip(t, filepath.Join(dir, testdisks.GPTVHDX), filepath.Join(dir, testdisks.GPTRaw),
			synthToolCase{opts: SynthOptions{BlockSize: 32 << 20}})
	})
}

// TestSynthRoundTripQemu: VHDX files made by qemu-img from the test images
// here, with several block sizes.
func TestSynthRoundTripQemu(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "vhdiinfo", "truncate")
	dir := t.TempDir()
	raw := synthOddImage(t, dir, 512)
	for _, bs := range []string{"1M", "8M", "32M"} {
		t.Run(bs, func(t *testing.T) {
			orig := filepath.Join(dir, "qemu-"+bs+".vhdx")
			synthExec(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size="+bs, raw, orig)
			synthRoundTrip(t, orig, raw, synthToolCase{})
		})
	}
}

// TestSynthRoundTripHyperV: the Windows-made dynamic and fixed disks keep
// their identifiers, sector sizes (physical 4096) and content.
func TestSynthRoundTripHyperV(t *testing.T) {
	testenv.NeedTools(t, "qemu-img", "vhdiinfo", "fls")
	for _, tc := range []struct {
		name, dataWrite, rawSHA string
	}{
		{"dynamic.vhdx", "28e09ae1-ab94-4815-a155-f143e2d00a3f", "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"},
		{"fixed.vhdx", "bfc189a1-751c-44ff-b60f-98d07b2950c0", "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			orig := filepath.Join(dir, tc.name)
			synthGunzip(t, filepath.Join(testenv.HyperVSamples(t), tc.name+".gz"), orig)
			raw := filepath.Join(dir, "orig.raw")
			synthExec(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", orig, raw)
			if got := synthFileSHA(t, raw); got != tc.rawSHA {
				t.Fatalf("sample content sha256 %s, README says %s", got, tc.rawSHA)
			}
			out := synthRoundTrip(t, orig, raw, synthToolCase{fls: map[int64]string{128: "$MFT"}})
			if got := synthVhdiIdentifier(t, out); got != tc.dataWrite {
				t.Fatalf("identifier %s, want %s", got, tc.dataWrite)
			}
			d, err := Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Identity().PhysicalSectorSize != 4096 {
				t.Fatalf("physical sector size %d, want 4096", d.Identity().PhysicalSectorSize)
			}
		})
	}
}

func synthGunzip(t *testing.T, src, dst string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		testenv.Skip(t, "Hyper-V sample missing: "+src)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
}
