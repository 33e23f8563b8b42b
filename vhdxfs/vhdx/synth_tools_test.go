//go:build unix

package vhdx

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// These tests build real disk images with real tools and check synthesized
// files with independent oracles: qemu-img (check, compare, info), libvhdi
// (vhdiinfo, python3-libvhdi) and sleuthkit reading through libvhdi.

const (
	synthSeekData = 3 // SEEK_DATA
	synthSeekHole = 4 // SEEK_HOLE
)

// synthSeekAlloc returns the data extents of a (sparse) file from
// SEEK_DATA/SEEK_HOLE, the same information a raw-disk backup would use.
func synthSeekAlloc(t testing.TB, path string) []vdisk.Extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var ext []vdisk.Extent
	for off := int64(0); off < st.Size(); {
		d, err := f.Seek(off, synthSeekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after off
		}
		if err != nil {
			t.Fatalf("SEEK_DATA: %v", err)
		}
		h, err := f.Seek(d, synthSeekHole)
		if err != nil {
			t.Fatalf("SEEK_HOLE: %v", err)
		}
		ext = append(ext, vdisk.Extent{Off: d, Len: h - d})
		off = h
	}
	return ext
}

func synthExec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// synthShell runs a shell snippet in dir (for tools that need pipes).
func synthShell(t testing.TB, dir, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func synthWriteRandom(t testing.TB, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	rand.Read(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func synthFileSHA(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// synthToolCase is one source image and how to synthesize it.
type synthToolCase struct {
	raw string // raw image: the source unless src is set, and the oracle
	// src and alloc override the raw file and its SEEK_DATA map (a disk
	// opened through the VHDX reader, say).
	src   io.ReaderAt
	alloc []vdisk.Extent
	id    vdisk.Identity
	opts  SynthOptions
	// fls lists sleuthkit checks: partition start sector -> file name
	// that must be listed through the VHDX ("" = any non-empty listing).
	fls map[int64]string
	// sleuthkit extraction: partition start, file name, expected sha256
	icat []synthIcat
}

type synthIcat struct {
	start int64
	name  string
	sha   string
}

// synthCheckTools synthesizes tc twice (WriteFile and a plain copy of the
// ReaderAt), checks both with every oracle and returns the WriteFile path.
func synthCheckTools(t *testing.T, tc synthToolCase) string {
	t.Helper()
	testenv.NeedTools(t, "qemu-img", "vhdiinfo")
	st, err := os.Stat(tc.raw)
	if err != nil {
		t.Fatal(err)
	}
	if tc.id.VirtualSize == 0 {
		tc.id.VirtualSize = st.Size()
	}
	if tc.id.DataWriteGUID.IsZero() {
		g, _ := vdisk.ParseGUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
		tc.id.DataWriteGUID = g
	}
	alloc, src := tc.alloc, tc.src
	if src == nil {
		alloc = synthSeekAlloc(t, tc.raw)
		f, err := os.Open(tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		src = f
	}
	s, err := NewSynth(tc.id, src, alloc, tc.opts)
	if err != nil {
		t.Fatal(err)
	}
	eff := s.Identity()
	dir := t.TempDir()

	// 1. WriteFile.
	viaFile := filepath.Join(dir, "file.vhdx")
	if err := s.WriteFile(context.Background(), viaFile); err != nil {
		t.Fatal(err)
	}
	// 2. The ReaderAt, copied by small sequential reads.
	viaReader := filepath.Join(dir, "reader.vhdx")
	f, err := os.Create(viaReader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, io.NewSectionReader(s, 0, s.Size())); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if a, b := synthFileSHA(t, viaFile), synthFileSHA(t, viaReader); a != b {
		t.Fatalf("WriteFile and ReaderAt copy differ: %s vs %s", a, b)
	}

	// Size: exactly the structure plus the blocks the allocation touches
	// (counted here block by block), at most two partial blocks per
	// extent above the allocated bytes; the disk space used is within a
	// few MiB of the allocated data because zero ranges are holes.
	norm := vdisk.NormalizeExtents(alloc, tc.id.VirtualSize)
	var allocBytes int64
	touched := map[int64]bool{}
	bs := int64(eff.BlockSize)
	for _, e := range norm {
		allocBytes += e.Len
		for b := e.Off / bs; b*bs < e.End(); b++ {
			touched[b] = true
		}
	}
	fst, err := os.Stat(viaFile)
	if err != nil {
		t.Fatal(err)
	}
	used := fst.Sys().(*syscall.Stat_t).Blocks * 512
	wantSize := s.lay.payloadOffset + int64(len(touched))*bs
	if fst.Size() != s.Size() || fst.Size() != wantSize || fst.Size() > s.lay.payloadOffset+allocBytes+2*bs*int64(len(norm)) {
		t.Fatalf("file size %d (Size %d), want %d for %d blocks; allocated %d", fst.Size(), s.Size(), wantSize, len(touched), allocBytes)
	}
	if used > allocBytes+4<<20 {
		t.Fatalf("file uses %d bytes on disk for %d allocated", used, allocBytes)
	}
	t.Logf("virtual %d, allocated %d, vhdx %d bytes (%d on disk), block %d MiB",
		tc.id.VirtualSize, allocBytes, fst.Size(), used, eff.BlockSize>>20)

	// The two files are byte-identical (checked above), so the oracles
	// would say the same of both; big disks are checked through one only
	// to spare the shared CPU a second 10 GiB compare.
	outs := []string{viaFile, viaReader}
	if tc.id.VirtualSize > 1<<30 {
		outs = outs[:1]
	}
	for _, out := range outs {
		synthOracles(t, out, tc, eff, s.PayloadMap())
	}
	return viaFile
}

func synthOracles(t *testing.T, out string, tc synthToolCase, eff vdisk.Identity, runs []SynthRun) {
	t.Helper()
	name := filepath.Base(out)
	if eff.LogicalSectorSize == 512 {
		// qemu cannot open LSS 4096 files (ENOTSUP).
		synthExec(t, "qemu-img", "check", "-f", "vhdx", out)
		got := synthExec(t, "qemu-img", "compare", "-f", "vhdx", "-F", "raw", out, tc.raw)
		if !strings.Contains(got, "Images are identical") {
			t.Fatalf("%s: qemu-img compare: %s", name, got)
		}
		var info struct {
			VirtualSize int64  `json:"virtual-size"`
			ClusterSize int64  `json:"cluster-size"`
			Format      string `json:"format"`
		}
		js := synthExec(t, "qemu-img", "info", "--output=json", "-f", "vhdx", out)
		if err := json.Unmarshal([]byte(js), &info); err != nil {
			t.Fatalf("qemu-img info: %v\n%s", err, js)
		}
		if info.VirtualSize != tc.id.VirtualSize || info.ClusterSize != int64(eff.BlockSize) || info.Format != "vhdx" {
			t.Fatalf("%s: qemu-img info %+v, want size %d block %d", name, info, tc.id.VirtualSize, eff.BlockSize)
		}
	}

	vi := synthExec(t, "vhdiinfo", out)
	field := func(re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(vi)
		if m == nil {
			t.Fatalf("%s: vhdiinfo output lacks %s:\n%s", name, re, vi)
		}
		return m[1]
	}
	if got := field(`Identifier\s*:\s*(\S+)`); got != tc.id.DataWriteGUID.String() {
		t.Fatalf("%s: vhdiinfo identifier %s, want %s", name, got, tc.id.DataWriteGUID)
	}
	if got := field(`Media size\s*:.*\((\d+) bytes\)`); got != strconv.FormatInt(tc.id.VirtualSize, 10) {
		t.Fatalf("%s: vhdiinfo media size %s, want %d", name, got, tc.id.VirtualSize)
	}
	if got := field(`Bytes per sector\s*:\s*(\d+)`); got != strconv.FormatUint(uint64(eff.LogicalSectorSize), 10) {
		t.Fatalf("%s: vhdiinfo sector size %s, want %d", name, got, eff.LogicalSectorSize)
	}
	if got := field(`Disk type\s*:\s*(\S+)`); got != "Dynamic" {
		t.Fatalf("%s: vhdiinfo disk type %s", name, got)
	}

	// Content through libvhdi (works for LSS 4096 too).
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		synthPyvhdiCompare(t, out, tc.raw, runs, int64(eff.BlockSize))
	} else {
		testenv.Skip(t, "needs /usr/bin/python3 with python3-libvhdi")
	}

	for start, want := range tc.fls {
		testenv.NeedTools(t, "fls")
		got := synthExec(t, "fls", "-i", "vhd", "-o", strconv.FormatInt(start, 10), out)
		if strings.TrimSpace(got) == "" || !strings.Contains(got, want) {
			t.Fatalf("%s: fls -o %d does not list %s:\n%s", name, start, want, got)
		}
	}
	for _, ic := range tc.icat {
		testenv.NeedTools(t, "fls", "icat")
		o := strconv.FormatInt(ic.start, 10)
		list := synthExec(t, "fls", "-i", "vhd", "-o", o, out)
		m := regexp.MustCompile(`(\d+)(?:-\S+)?:\s+` + regexp.QuoteMeta(ic.name) + `\n`).FindStringSubmatch(list)
		if m == nil {
			t.Fatalf("%s: fls -o %s: no %s in\n%s", name, o, ic.name, list)
		}
		data, err := exec.Command("icat", "-i", "vhd", "-o", o, out, m[1]).Output()
		if err != nil {
			t.Fatalf("icat %s: %v", ic.name, err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != ic.sha {
			t.Fatalf("%s: icat %s: sha256 mismatch (%d bytes)", name, ic.name, len(data))
		}
	}
}

// synthPyvhdiCompare reads ranges of the disk through python3-libvhdi and
// compares their hash (and the media size) with the raw image's. Small
// disks are read whole; big ones at the stored blocks plus samples of the
// holes, because reading 10 GiB through Python takes half a minute.
func synthPyvhdiCompare(t *testing.T, vhdx, raw string, runs []SynthRun, blockSize int64) {
	t.Helper()
	st, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	size := st.Size()
	var ranges [][2]int64
	if size <= 1<<30 {
		ranges = append(ranges, [2]int64{0, size})
	} else {
		for _, r := range runs {
			ranges = append(ranges, [2]int64{r.DiskOffset, min(r.Blocks*blockSize, size-r.DiskOffset)})
		}
		for i := int64(0); i < 8; i++ {
			off := (size / 8 * i) + (i * 7919 * 4096 % (size / 8))
			ranges = append(ranges, [2]int64{off, min(1<<20, size-off)})
		}
		ranges = append(ranges, [2]int64{size - 1<<20, 1 << 20})
	}
	var spec []string
	h := sha256.New()
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, r := range ranges {
		spec = append(spec, fmt.Sprintf("%d:%d", r[0], r[1]))
		if _, err := io.Copy(h, io.NewSectionReader(f, r[0], r[1])); err != nil {
			t.Fatal(err)
		}
	}
	const script = `
import hashlib, sys, pyvhdi
f = pyvhdi.file(); f.open(sys.argv[1]); h = hashlib.sha256()
for r in sys.argv[2].split(","):
    off, n = map(int, r.split(":")); end = off + n
    while off < end:
        b = f.read_buffer_at_offset(min(8 << 20, end - off), off)
        if not b: raise SystemExit("short read at %d" % off)
        h.update(b); off += len(b)
print(f.get_media_size(), f.get_bytes_per_sector(), h.hexdigest())
`
	out, err := exec.Command("/usr/bin/python3", "-c", script, vhdx, strings.Join(spec, ",")).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No module named 'pyvhdi'") {
			testenv.Skip(t, "needs python3-libvhdi")
		}
		t.Fatalf("pyvhdi: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 3 {
		t.Fatalf("pyvhdi output %q", out)
	}
	if want := hex.EncodeToString(h.Sum(nil)); fields[0] != strconv.FormatInt(size, 10) || fields[2] != want {
		t.Fatalf("pyvhdi: %s: size %s hash %s, raw is %d bytes, hash %s", filepath.Base(vhdx), fields[0], fields[2], size, want)
	}
}

// synthGPTImage builds a 128 MiB GPT disk with an ext4 and a FAT32
// partition, both written in place (VHDX-NOTES 6.2), and returns the
// sha256 of the files it put in them.
func synthGPTImage(t *testing.T, dir string) (raw string, icat []synthIcat) {
	testenv.NeedTools(t, "sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
	raw = filepath.Join(dir, "gpt.raw")
	root := filepath.Join(dir, "extroot")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20+123)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(root, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "sub", "hello.txt"), []byte("hello from ext4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fat := []byte("hello from fat32\n")
	if err := os.WriteFile(filepath.Join(dir, "fat.txt"), fat, 0o644); err != nil {
		t.Fatal(err)
	}
	synthShell(t, dir, `
truncate -s 128M gpt.raw
sgdisk -o -n1:2048:+32M -t1:8300 -c1:linux -n2:0:+40M -t2:ef00 -c2:esp gpt.raw >/dev/null
mkfs.ext4 -F -q -L LINUXVOL -d extroot -E offset=$((2048*512)) gpt.raw 32M
mkfs.vfat -F 32 -s 1 -n ESPVOL --offset 67584 gpt.raw 40960 >/dev/null 2>&1
mcopy -i gpt.raw@@$((67584*512)) fat.txt ::/fat.txt
`)
	sb, sf := sha256.Sum256(big), sha256.Sum256(fat)
	return raw, []synthIcat{
		{2048, "big.bin", hex.EncodeToString(sb[:])},
		{67584, "fat.txt", hex.EncodeToString(sf[:])},
	}
}

func TestSynthToolsGPT(t *testing.T) {
	dir := t.TempDir()
	raw, icat := synthGPTImage(t, dir)
	for _, bs := range []uint32{0, 1 << 20, 32 << 20} {
		t.Run(fmt.Sprintf("block%dM", bs>>20), func(t *testing.T) {
			synthCheckTools(t, synthToolCase{
				raw:  raw,
				opts: SynthOptions{BlockSize: bs},
				fls:  map[int64]string{2048: "sub", 67584: "fat.txt"},
				icat: icat,
			})
		})
	}
}

// 100 MiB + tail bytes: a partial last block, random data regions crossing
// block boundaries, holes, and data in the very last sector.
func synthOddImage(t *testing.T, dir string, tail int64) string {
	raw := filepath.Join(dir, "odd.raw")
	synthExec(t, "truncate", "-s", strconv.FormatInt(100<<20+tail, 10), raw)
	for _, r := range [][2]int64{
		{0, 64 << 10},
		{2<<20 - 4096, 8192},    // straddles a 2 MiB boundary
		{17<<20 + 512, 5 << 20}, // several blocks, unaligned
		{64 << 20, 4096},
		{100 << 20, tail}, // the last sector, past the last full block
	} {
		synthWriteRandom(t, raw, r[0], r[1])
	}
	return raw
}

func TestSynthToolsOddSize(t *testing.T) {
	testenv.NeedTools(t, "truncate")
	raw := synthOddImage(t, t.TempDir(), 512)
	for _, bs := range []uint32{0, 1 << 20, 256 << 20} {
		t.Run(fmt.Sprintf("block%dM", bs>>20), func(t *testing.T) {
			synthCheckTools(t, synthToolCase{raw: raw, opts: SynthOptions{BlockSize: bs}})
		})
	}
}

// Sector-size variants: PSS 4096 (qemu and libvhdi) and LSS 4096 (libvhdi
// only; qemu refuses such files).
func TestSynthToolsSectorSizes(t *testing.T) {
	testenv.NeedTools(t, "truncate")
	raw := synthOddImage(t, t.TempDir(), 4096) // a multiple of both sector sizes
	for _, ss := range [][2]uint32{{512, 4096}, {4096, 512}, {4096, 4096}} {
		t.Run(fmt.Sprintf("lss%d-pss%d", ss[0], ss[1]), func(t *testing.T) {
			synthCheckTools(t, synthToolCase{
				raw: raw,
				id:  vdisk.Identity{LogicalSectorSize: ss[0], PhysicalSectorSize: ss[1]},
			})
		})
	}
}

// A 10 GiB sparse disk with a little data gives a file of a few MiB.
func TestSynthToolsSparse10G(t *testing.T) {
	testenv.NeedTools(t, "truncate")
	dir := t.TempDir()
	raw := filepath.Join(dir, "sparse.raw")
	synthExec(t, "truncate", "-s", "10G", raw)
	for _, r := range [][2]int64{{0, 1 << 20}, {5<<30 + 123*512, 70000}, {10<<30 - 4096, 4096}} {
		synthWriteRandom(t, raw, r[0], r[1])
	}
	synthCheckTools(t, synthToolCase{raw: raw})
}

// Nothing allocated at all: the file is only structure.
func TestSynthToolsEmpty(t *testing.T) {
	testenv.NeedTools(t, "truncate")
	raw := filepath.Join(t.TempDir(), "empty.raw")
	synthExec(t, "truncate", "-s", "256M", raw)
	synthCheckTools(t, synthToolCase{raw: raw})
}
