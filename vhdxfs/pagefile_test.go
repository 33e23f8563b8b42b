package vhdxfs

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "TZ=UTC")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.Bytes()
}

func shaHex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func randomBytes(rnd *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rnd.Uint32())
	}
	return b
}

func newNTFS(t *testing.T, path string, size int64, label string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	runTool(t, "mkntfs", "-F", "-Q", "-q", "-L", label, path)
}

// pageVolume builds a 32 MiB NTFS volume through an ntfs-3g mount: a few
// ordinary files, HIBERFIL.SYS (upper case, contiguous), swapfile.sys
// (small enough to be resident in its MFT record), then fills the volume
// with 64 KiB files, deletes every other one and writes a fragmented
// pagefile.sys into the holes. It returns every root or dir/ file's
// content by path.
func pageVolume(t *testing.T, path string) map[string][]byte {
	testenv.NeedTools(t, "mkntfs", "ntfs-3g", "umount")
	testenv.NeedFUSE(t)
	newNTFS(t, path, 32<<20, "PAGEVOL")
	mnt := t.TempDir()
	runTool(t, "ntfs-3g", path, mnt)
	mounted := true
	unmount := func() {
		if mounted {
			mounted = false
			if err := exec.Command("umount", mnt).Run(); err != nil {
				exec.Command("umount", "-l", mnt).Run()
			}
		}
	}
	t.Cleanup(unmount)
	rnd := rand.New(rand.NewChaCha8([32]byte{'v', 'h', 'd', 'x'}))
	files := map[string][]byte{}
	put := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(mnt, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	put("notes.txt", []byte("not a page file\n"))
	put("pagefile.sys.bak", randomBytes(rnd, 100_000)) // a near miss that must stay
	put("HIBERFIL.SYS", randomBytes(rnd, 3<<20+77))
	put("swapfile.sys", randomBytes(rnd, 256))
	if err := os.Mkdir(filepath.Join(mnt, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	var fill []string
	for i := 0; i < 4000; i++ {
		name := fmt.Sprintf("dir/f%04d", i)
		b := randomBytes(rnd, 64<<10)
		if err := os.WriteFile(filepath.Join(mnt, name), b, 0o644); err != nil {
			os.Remove(filepath.Join(mnt, name))
			break
		}
		files[name] = b
		fill = append(fill, name)
	}
	if len(fill) < 100 {
		t.Fatalf("filled only %d files", len(fill))
	}
	for i := 0; i < len(fill); i += 2 {
		if err := os.Remove(filepath.Join(mnt, fill[i])); err != nil {
			t.Fatal(err)
		}
		delete(files, fill[i])
	}
	put("pagefile.sys", randomBytes(rnd, 5<<20+1234))
	unmount()
	return files
}

// gptDisk writes a GPT disk of size bytes with one partition per volume
// image, at the given sectors (sgdisk -a 1, so starts need not be aligned),
// and copies each image into its partition (what dd conv=notrunc does).
func gptDisk(t *testing.T, path string, size int64, starts []int64, images []string) {
	t.Helper()
	testenv.NeedTools(t, "sgdisk")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	args := []string{"-a", "1"}
	for i, img := range images {
		st, err := os.Stat(img)
		if err != nil {
			t.Fatal(err)
		}
		end := starts[i] + st.Size()/512 - 1
		args = append(args, "-n", fmt.Sprintf("%d:%d:%d", i+1, starts[i], end), "-t", fmt.Sprintf("%d:0700", i+1))
	}
	runTool(t, "sgdisk", append(args, path)...)
	for i, img := range images {
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, starts[i]*512); err != nil {
			t.Fatal(err)
		}
	}
}

// inodes maps names to MFT entry numbers per sleuthkit's fls.
func inodes(t *testing.T, disk string, startSector int64, dir string) map[string]string {
	t.Helper()
	args := []string{"-o", strconv.FormatInt(startSector, 10), disk}
	if dir != "" {
		args = append(args, dir)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(runTool(t, "fls", args...)), "\n") {
		head, name, ok := strings.Cut(line, "\t")
		if !ok || strings.Contains(head, "*") {
			continue
		}
		f := strings.Fields(head)
		ino, _, _ := strings.Cut(strings.TrimSuffix(f[len(f)-1], ":"), "-")
		m[name] = ino
	}
	return m
}

// istatExtents lists the clusters of an inode's unnamed $DATA as sleuthkit's
// istat prints them, as disk byte ranges.
func istatExtents(t *testing.T, disk string, startSector int64, inode string, cs int64) []Extent {
	t.Helper()
	out := runTool(t, "istat", "-o", strconv.FormatInt(startSector, 10), disk, inode)
	sc := bufio.NewScanner(bytes.NewReader(out))
	in := false
	var ext []Extent
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Type: ") {
			in = strings.HasPrefix(line, "Type: $DATA") && strings.Contains(line, "Name: N/A") && strings.Contains(line, "Non-Resident")
			continue
		}
		for _, f := range strings.Fields(line) {
			c, err := strconv.ParseInt(f, 10, 64)
			if !in || err != nil {
				in = false
				break
			}
			if c == 0 {
				continue // sparse
			}
			ext = append(ext, Extent{Off: startSector*512 + c*cs, Len: cs})
		}
	}
	return ext
}

func TestPageFileRanges(t *testing.T) {
	testenv.NeedTools(t, "mkntfs", "fls", "istat", "icat")
	dir := t.TempDir()
	// p1: NTFS without page files. p2: the page-file volume, at an odd
	// sector so that a missing partition offset cannot pass. p3: an NTFS
	// boot sector over zeros, which detects as NTFS and fails to open.
	plain := filepath.Join(dir, "plain.img")
	newNTFS(t, plain, 16<<20, "PLAIN")
	testenv.NeedTools(t, "ntfscp")
	notes := filepath.Join(dir, "pagefile.txt")
	if err := os.WriteFile(notes, []byte("a file named like one, on a volume without page files\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "ntfscp", "-q", plain, notes, "/pagefile.txt")
	pageImg := filepath.Join(dir, "page.img")
	files := pageVolume(t, pageImg)
	broken := filepath.Join(dir, "broken.img")
	boot := make([]byte, 4<<20)
	pb, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	copy(boot, pb[:512])
	if err := os.WriteFile(broken, boot, 0o644); err != nil {
		t.Fatal(err)
	}
	starts := []int64{2048, 2048 + 32768 + 1, 2048 + 32768 + 1 + 65536 + 7}
	disk := filepath.Join(dir, "disk.raw")
	gptDisk(t, disk, 64<<20, starts, []string{plain, pageImg, broken})

	d, err := Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pfs, warns, err := PageFileRanges(d)
	if err != nil {
		t.Fatal(err)
	}
	// (c) and the broken volume: one warning, for p3 only.
	t.Logf("warnings: %q", warns)
	if len(warns) != 1 || !strings.Contains(warns[0], "p3:") {
		t.Errorf("warnings %q, want one for p3", warns)
	}
	got := map[string]PageFile{}
	for _, pf := range pfs {
		if pf.Volume != 2 {
			t.Errorf("page file on p%d: %+v", pf.Volume, pf)
		}
		got[pf.Path] = pf
	}
	if len(pfs) != 3 || len(got) != 3 {
		t.Fatalf("got %d page files %v, want pagefile.sys, HIBERFIL.SYS, swapfile.sys on p2", len(pfs), slices.Collect(maps.Keys(got)))
	}

	vols, _, err := Volumes(d)
	if err != nil {
		t.Fatal(err)
	}
	p2 := vols[1]
	if p2.Partition.Index != 2 || p2.Partition.Start != starts[1]*512 {
		t.Fatalf("p2 = %+v", p2.Partition)
	}
	fsys, err := p2.OpenFS()
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ino := inodes(t, disk, starts[1], "")
	const cs = 4096 // mkntfs default for a 32 MiB volume
	for name, pf := range got {
		want := files[name]
		if pf.Size != int64(len(want)) {
			t.Errorf("%s: size %d, want %d", name, pf.Size, len(want))
		}
		if !slices.IsSortedFunc(pf.Extents, func(a, b Extent) int { return int(a.Off - b.Off) }) ||
			!slices.Equal(pf.Extents, vdisk.NormalizeExtents(pf.Extents, d.Size())) {
			t.Errorf("%s: extents not normalised: %v", name, pf.Extents)
		}
		// (a) The same clusters as sleuthkit's istat.
		oracle := vdisk.NormalizeExtents(istatExtents(t, disk, starts[1], ino[name], cs), d.Size())
		if !slices.Equal(pf.Extents, oracle) {
			t.Errorf("%s: extents %v, istat %v", name, pf.Extents, oracle)
		}
		// icat (the oracle) reads the file we wrote.
		if shaHex(runTool(t, "icat", "-o", strconv.FormatInt(starts[1], 10), disk, ino[name])) != shaHex(want) {
			t.Fatalf("%s: icat disagrees with the source; the fixture is wrong", name)
		}
		if name == "swapfile.sys" {
			if len(pf.Extents) != 0 {
				t.Errorf("resident swapfile.sys has extents %v", pf.Extents)
			}
			continue
		}
		// (a, b) In file order, the disk bytes at the extents are the
		// file; normalised, they are what PageFileRanges returned.
		fext, err := fsys.(guest.Extenter).FileExtents(name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "pagefile.sys" && len(fext) < 3 {
			t.Errorf("pagefile.sys has %d extents: not fragmented, the test proves less than it claims", len(fext))
		}
		var cat []byte
		var shifted []Extent
		for _, e := range fext {
			b := make([]byte, e.Len)
			if _, err := d.ReadAt(b, p2.Partition.Start+e.Off); err != nil {
				t.Fatal(err)
			}
			cat = append(cat, b...)
			shifted = append(shifted, Extent{Off: p2.Partition.Start + e.Off, Len: e.Len})
		}
		if len(cat) < len(want) || shaHex(cat[:len(want)]) != shaHex(want) {
			t.Errorf("%s: the %d bytes at its extents are not the file", name, len(cat))
		}
		if !slices.Equal(vdisk.NormalizeExtents(shifted, d.Size()), pf.Extents) {
			t.Errorf("%s: file-order extents %v normalise to something else than %v", name, fext, pf.Extents)
		}
	}

	// (d) Zero the ranges in a copy: the page files read back as zeros of
	// the same length, every other file and both other volumes as before.
	img, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	var zeroed int64
	for _, pf := range pfs {
		for _, e := range pf.Extents {
			clear(img[e.Off:e.End()])
			zeroed += e.Len
		}
	}
	if zeroed < 8<<20 {
		t.Fatalf("only %d bytes zeroed", zeroed)
	}
	zdisk := filepath.Join(dir, "zeroed.raw")
	if err := os.WriteFile(zdisk, img, 0o644); err != nil {
		t.Fatal(err)
	}
	for name := range got {
		want := make([]byte, len(files[name]))
		if name == "swapfile.sys" {
			want = files[name] // resident: its bytes live in the MFT record, kept
		}
		if b := runTool(t, "icat", "-o", strconv.FormatInt(starts[1], 10), zdisk, ino[name]); shaHex(b) != shaHex(want) {
			t.Errorf("%s after zeroing: %d bytes, sha %s; want %d zeros", name, len(b), shaHex(b), len(want))
		}
	}
	zd, err := Open(zdisk)
	if err != nil {
		t.Fatal(err)
	}
	defer zd.Close()
	zvols, _, err := Volumes(zd)
	if err != nil {
		t.Fatal(err)
	}
	zfs, err := zvols[1].OpenFS()
	if err != nil {
		t.Fatal(err)
	}
	defer zfs.Close()
	checked := 0
	for name, want := range files {
		if _, ok := got[name]; ok {
			continue
		}
		f, err := zfs.Open(name)
		if err != nil {
			t.Errorf("%s after zeroing: %v", name, err)
			continue
		}
		b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
		f.Close()
		if err != nil || shaHex(b) != shaHex(want) {
			t.Errorf("%s after zeroing: %d bytes, %v; changed", name, len(b), err)
		}
		checked++
	}
	if checked < 50 {
		t.Errorf("only %d other files checked", checked)
	}
	pfs2, _, err := PageFileRanges(zd)
	if err != nil || !slices.EqualFunc(pfs, pfs2, func(a, b PageFile) bool {
		return a.Path == b.Path && a.Size == b.Size && slices.Equal(a.Extents, b.Extents)
	}) {
		t.Errorf("after zeroing the metadata changed: %+v, %v", pfs2, err)
	}
	zp1, err := zvols[0].OpenFS()
	if err != nil {
		t.Fatal(err)
	}
	defer zp1.Close()
	if f, err := zp1.Open("pagefile.txt"); err != nil {
		t.Errorf("p1: %v", err)
	} else {
		f.Close()
	}
}

// overlayDisk is a Disk with one partition's bytes replaced by a file and
// some ranges zeroed: the shared fixture disk with a page file added,
// without copying its 200 MiB.
type overlayDisk struct {
	Disk
	part       *os.File
	start, end int64
	zero       []Extent
}

func (o *overlayDisk) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.Disk.ReadAt(p, off)
	if lo, hi := max(off, o.start), min(off+int64(n), o.end); lo < hi {
		if _, err := o.part.ReadAt(p[lo-off:hi-off], lo-o.start); err != nil {
			return 0, err
		}
	}
	for _, z := range o.zero {
		if lo, hi := max(off, z.Off), min(off+int64(n), z.End()); lo < hi {
			clear(p[lo-off : hi-off])
		}
	}
	return n, err
}

// TestPageFileRangesFixture adds a page file to the NTFS partition of the
// shared GPT fixture with ntfscp, zeroes the ranges PageFileRanges reports,
// and checks every manifest file of every partition: (d) with the files the
// fixture script put there, hard links, ADS and all.
func TestPageFileRangesFixture(t *testing.T) {
	testenv.NeedTools(t, "ntfscp")
	fixture := testdisks.Path(t, testdisks.GPTRaw)
	var ntfs testdisks.Partition
	for _, p := range testdisks.Partitions {
		if p.Image == testdisks.GPTVHDX && p.FS == testdisks.FSNTFS {
			ntfs = p
		}
	}
	src, err := os.Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	volPath := filepath.Join(t.TempDir(), "p.img")
	vol, err := os.Create(volPath)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	if _, err := io.Copy(vol, io.NewSectionReader(src, ntfs.Start*512, ntfs.Sectors*512)); err != nil {
		t.Fatal(err)
	}
	pf := randomBytes(rand.New(rand.NewPCG(3, 4)), 6<<20+9)
	pfPath := filepath.Join(t.TempDir(), "pagefile.sys")
	if err := os.WriteFile(pfPath, pf, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "ntfscp", "-q", volPath, pfPath, "/pagefile.sys")

	base, err := Open(fixture)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	od := &overlayDisk{Disk: base, part: vol, start: ntfs.Start * 512, end: (ntfs.Start + ntfs.Sectors) * 512}
	pfs, warns, err := PageFileRanges(od)
	if err != nil || len(warns) != 0 || len(pfs) != 1 || pfs[0].Path != "pagefile.sys" || pfs[0].Volume != ntfs.Num || pfs[0].Size != int64(len(pf)) {
		t.Fatalf("PageFileRanges = %+v, %q, %v", pfs, warns, err)
	}
	var total int64
	for _, e := range pfs[0].Extents {
		if e.Off < od.start || e.End() > od.end {
			t.Fatalf("extent %+v outside p%d", e, ntfs.Num)
		}
		total += e.Len
	}
	if total < int64(len(pf)) || total > int64(len(pf))+64<<10 {
		t.Fatalf("%d bytes of extents for a %d-byte file", total, len(pf))
	}
	od.zero = pfs[0].Extents

	vols, _, err := Volumes(od)
	if err != nil {
		t.Fatal(err)
	}
	man := testdisks.Manifest(t)
	checked := 0
	for _, v := range vols {
		fsys, err := v.OpenFS()
		if err != nil {
			t.Fatalf("p%d: %v", v.Partition.Index, err)
		}
		defer fsys.Close()
		for _, e := range man {
			if e.Image != testdisks.GPTVHDX || e.Part != v.Partition.Index || e.Kind != 'f' {
				continue
			}
			f, err := fsys.Open(e.Path)
			if err != nil {
				t.Errorf("p%d: %s: %v", e.Part, e.Path, err)
				continue
			}
			b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
			f.Close()
			if err != nil || int64(len(b)) != e.Size || shaHex(b) != e.SHA256 {
				t.Errorf("p%d: %s changed after zeroing the page file (%d bytes, %v)", e.Part, e.Path, len(b), err)
			}
			checked++
		}
		if v.Partition.Index == ntfs.Num {
			f, err := fsys.Open("pagefile.sys")
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
			f.Close()
			if err != nil || len(b) != len(pf) || !bytes.Equal(b, make([]byte, len(pf))) {
				t.Errorf("pagefile.sys after zeroing: %d bytes, %v; want %d zeros", len(b), err, len(pf))
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d manifest files checked", checked)
	}
}
