package guest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/internal/testenv"
)

func TestDecodeRunList(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want []dataRun
		bad  bool
	}{
		{"empty list", []byte{0}, nil, false},
		{"one run", []byte{0x21, 0x10, 0x00, 0x01, 0}, []dataRun{{lcn: 256, length: 16}}, false},
		{"relative second run", []byte{0x21, 0x10, 0x00, 0x01, 0x11, 0x08, 0x20, 0},
			[]dataRun{{lcn: 256, length: 16}, {lcn: 288, length: 8}}, false},
		{"negative delta", []byte{0x21, 0x10, 0x00, 0x01, 0x11, 0x08, 0xF0, 0},
			[]dataRun{{lcn: 256, length: 16}, {lcn: 240, length: 8}}, false},
		{"sparse run keeps the lcn", []byte{0x21, 0x10, 0x00, 0x01, 0x01, 0x20, 0x11, 0x04, 0x10, 0},
			[]dataRun{{lcn: 256, length: 16}, {length: 32, sparse: true}, {lcn: 272, length: 4}}, false},
		{"8-byte fields", []byte{0x88, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0},
			[]dataRun{{lcn: 2, length: 1}}, false},
		{"no terminator", []byte{0x21, 0x10, 0x00, 0x01}, nil, true},
		{"empty input", nil, nil, true},
		{"field past the end", []byte{0x21, 0x10, 0x00}, nil, true},
		{"length field of 9 bytes", []byte{0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, true},
		{"offset field of 9 bytes", []byte{0x91, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, true},
		{"zero length size", []byte{0x20, 0x00, 0x01, 0}, nil, true},
		{"zero length", []byte{0x21, 0x00, 0x00, 0x01, 0}, nil, true},
		{"negative length", []byte{0x18, 0, 0, 0, 0, 0, 0, 0, 0x80, 0}, nil, true},
		{"lcn overflow", []byte{0x81, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x81, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0}, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := decodeRunList(c.in, 100)
			if c.bad {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("got %v, %v; want ErrCorrupt", got, err)
				}
				return
			}
			if err != nil || !slices.Equal(got, c.want) {
				t.Fatalf("got %v, %v; want %v", got, err, c.want)
			}
		})
	}
	// The run cap holds.
	many := append(bytes.Repeat([]byte{0x11, 0x01, 0x01}, 11), 0)
	if _, err := decodeRunList(many, 10); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("11 runs with a cap of 10: %v", err)
	}
	if r, err := decodeRunList(many, 11); err != nil || len(r) != 11 {
		t.Fatalf("11 runs with a cap of 11: %d, %v", len(r), err)
	}
}

// pageImage is an NTFS volume with Windows-like scratch files plus the
// bytes written into it.
type pageImage struct {
	img   string
	files map[string][]byte // name in the root -> content
}

// buildPageImage writes, through an ntfs-3g mount: hiberfil.sys (contiguous,
// written into the empty volume), a resident file, an empty file, a sparse
// file, a compressed file, then fills the volume with 64 KiB files, deletes
// every other one and writes pagefile.sys into the holes, so that it is
// fragmented the way a page file on a well-used volume is.
func buildPageImage(t *testing.T) pageImage {
	testenv.NeedTools(t, "mkntfs", "ntfs-3g", "umount")
	testenv.NeedFUSE(t)
	img := filepath.Join(t.TempDir(), "page.img")
	f, err := os.Create(img)
	must(t, err)
	must(t, f.Truncate(32<<20))
	f.Close()
	run(t, "mkntfs", "-F", "-Q", "-q", "-L", "PAGEVOL", img)
	mnt := t.TempDir()
	run(t, "ntfs-3g", "-o", "compression", img, mnt)
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

	rnd := rand.New(rand.NewChaCha8([32]byte{'p', 'f'}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	p := pageImage{img: img, files: map[string][]byte{}}
	put := func(name string, b []byte) {
		t.Helper()
		must(t, os.WriteFile(filepath.Join(mnt, name), b, 0o644))
		p.files[name] = b
	}
	put("hiberfil.sys", random(3<<20+5))
	put("small.txt", []byte("resident data\n"))
	put("empty.txt", nil)
	sp, err := os.Create(filepath.Join(mnt, "sparse.bin"))
	must(t, err)
	_, err = sp.WriteAt([]byte("in the middle"), 1<<20)
	must(t, err)
	must(t, sp.Truncate(2<<20))
	must(t, sp.Close())
	sparse := make([]byte, 2<<20)
	copy(sparse[1<<20:], "in the middle")
	p.files["sparse.bin"] = sparse
	must(t, os.Mkdir(filepath.Join(mnt, "dir"), 0o755))
	must(t, os.Mkdir(filepath.Join(mnt, "compressed"), 0o755))
	attr := make([]byte, 4)
	_, err = unix.Getxattr(filepath.Join(mnt, "compressed"), "system.ntfs_attrib", attr)
	must(t, err)
	binary.LittleEndian.PutUint32(attr, binary.LittleEndian.Uint32(attr)|0x800) // FILE_ATTRIBUTE_COMPRESSED
	must(t, unix.Setxattr(filepath.Join(mnt, "compressed"), "system.ntfs_attrib", attr, 0))
	must(t, os.WriteFile(filepath.Join(mnt, "compressed", "text.txt"), bytes.Repeat([]byte("compress me "), 50_000), 0o644))

	// Fill, then free every other 64 KiB file.
	chunk := random(64 << 10)
	var fill []string
	for i := 0; i < 4000; i++ {
		name := filepath.Join(mnt, "dir", fmt.Sprintf("f%04d", i))
		if err := os.WriteFile(name, chunk, 0o644); err != nil {
			os.Remove(name)
			break
		}
		fill = append(fill, name)
	}
	if len(fill) < 100 {
		t.Fatalf("filled only %d files", len(fill))
	}
	for i := 0; i < len(fill); i += 2 {
		must(t, os.Remove(fill[i]))
	}
	put("pagefile.sys", random(5<<20+1234))
	unmount()
	return p
}

// istatRuns returns the clusters of the unnamed $DATA of MFT entry inode as
// sleuthkit sees them, merged into runs in file order (sparse clusters,
// which istat prints as 0, left out), in bytes.
func istatRuns(t *testing.T, img string, offsetSectors int64, inode string, cs int64) []Extent {
	t.Helper()
	out := run(t, "istat", "-o", strconv.FormatInt(offsetSectors, 10), img, inode)
	sc := bufio.NewScanner(strings.NewReader(out))
	in := false
	var ext []Extent
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Type: ") {
			in = strings.HasPrefix(line, "Type: $DATA") && strings.Contains(line, "Name: N/A") && strings.Contains(line, "Non-Resident")
			continue
		}
		if !in {
			continue
		}
		for _, f := range strings.Fields(line) {
			c, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				in = false
				break
			}
			if c == 0 {
				continue
			}
			if k := len(ext) - 1; k >= 0 && ext[k].End() == c*cs {
				ext[k].Len += cs
			} else {
				ext = append(ext, Extent{Off: c * cs, Len: cs})
			}
		}
	}
	return ext
}

// flsInodes maps root names to MFT entry numbers per `fls` (sleuthkit).
func flsInodes(t *testing.T, img string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(run(t, "fls", img), "\n") {
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

func readExtents(t *testing.T, r io.ReaderAt, ext []Extent) []byte {
	t.Helper()
	var out []byte
	for _, e := range ext {
		b := make([]byte, e.Len)
		_, err := r.ReadAt(b, e.Off)
		must(t, err)
		out = append(out, b...)
	}
	return out
}

func TestNTFSFileExtents(t *testing.T) {
	p := buildPageImage(t)
	testenv.NeedTools(t, "istat", "fls")
	g := openImage(t, p.img, "ntfs", "PAGEVOL")
	ex, ok := g.(Extenter)
	if !ok {
		t.Fatalf("%T does not implement Extenter", g)
	}
	r, size := imageFile(t, p.img)
	ino := flsInodes(t, p.img)
	const cs = 4096 // mkntfs default for a 32 MiB volume
	for name, want := range p.files {
		ext, err := ex.FileExtents(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var total int64
		for i, e := range ext {
			if e.Off <= 0 || e.Len <= 0 || e.End() > size || e.Off%cs != 0 || e.Len%cs != 0 {
				t.Fatalf("%s: bad extent %+v", name, e)
			}
			if i > 0 && ext[i-1].End() == e.Off {
				t.Errorf("%s: adjacent extents not merged: %v", name, ext)
			}
			total += e.Len
		}
		if oracle := istatRuns(t, p.img, 0, ino[name], cs); !slices.Equal(ext, oracle) {
			t.Errorf("%s: extents %v, istat %v", name, ext, oracle)
		}
		switch name {
		case "small.txt", "empty.txt":
			if len(ext) != 0 {
				t.Errorf("%s: resident/empty file has extents %v", name, ext)
			}
			continue
		case "sparse.bin":
			// Only the cluster holding data is allocated.
			if total >= int64(len(want)) || total == 0 {
				t.Errorf("sparse.bin: %d allocated bytes", total)
			}
			continue
		case "pagefile.sys":
			t.Logf("pagefile.sys: %d extents", len(ext))
			if len(ext) < 3 {
				t.Errorf("pagefile.sys is not fragmented (%d extents): the test does not test what it claims", len(ext))
			}
		}
		// Allocated = size rounded up to clusters; the bytes at the
		// extents, in order, are the file.
		if total != (int64(len(want))+cs-1)/cs*cs {
			t.Errorf("%s: %d bytes in extents for a %d-byte file", name, total, len(want))
		}
		got := readExtents(t, r, ext)
		if len(got) < len(want) || sha(got[:len(want)]) != sha(want) {
			t.Errorf("%s: bytes at the extents differ from the file", name)
		}
	}
	// The case-insensitive lookup of the FS applies.
	a, err1 := ex.FileExtents("pagefile.sys")
	b, err2 := ex.FileExtents("PAGEFILE.SYS")
	if err1 != nil || err2 != nil || !slices.Equal(a, b) {
		t.Errorf("PAGEFILE.SYS: %v %v, pagefile.sys: %v %v", b, err2, a, err1)
	}
	if _, err := ex.FileExtents("compressed/text.txt"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("compressed file: %v, want ErrUnsupported", err)
	}
	if _, err := ex.FileExtents("dir"); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("directory: %v, want ErrInvalid", err)
	}
	if _, err := ex.FileExtents("swapfile.sys"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := ex.FileExtents("/pagefile.sys"); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("invalid path: %v, want ErrInvalid", err)
	}
}

func TestFileExtentsOnlyNTFS(t *testing.T) {
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "pagefile.sys"), []byte("not NTFS"), 0o644))
	g := openImage(t, buildFAT(t, src, 16), "fat16", "FAT16VOL")
	if _, ok := g.(Extenter); ok {
		t.Fatalf("FAT claims to be an Extenter")
	}
}

// ntfsRecord locates MFT record ref of an NTFS image and its unnamed
// non-resident $DATA attribute (offset inside the record), by hand from the
// on-disk format. The $MFT grows in pieces, so a record is found through the
// run list of record 0.
func ntfsRecord(t *testing.T, img []byte, ref int64) (recOff, dataOff int64) {
	t.Helper()
	bps := int64(binary.LittleEndian.Uint16(img[0x0B:]))
	cs := bps * int64(img[0x0D])
	mft := int64(binary.LittleEndian.Uint64(img[0x30:])) * cs
	recSize := int64(1) << -int8(img[0x40]) // clusters-per-record < 0: 2^-n bytes
	dataAttr := func(rec []byte) int64 {
		for a := int64(binary.LittleEndian.Uint16(rec[0x14:])); a+16 < recSize; {
			typ := binary.LittleEndian.Uint32(rec[a:])
			l := int64(binary.LittleEndian.Uint32(rec[a+4:]))
			if typ == 0xFFFFFFFF || l == 0 {
				break
			}
			if typ == 0x80 && rec[a+8] == 1 && rec[a+9] == 0 {
				return a
			}
			a += l
		}
		t.Fatalf("record %d has no non-resident unnamed $DATA", ref)
		return 0
	}
	rec0 := img[mft : mft+recSize]
	a := dataAttr(rec0)
	runs, err := decodeRunList(rec0[a+int64(binary.LittleEndian.Uint16(rec0[a+0x20:])):], 100)
	must(t, err)
	pos := ref * recSize
	for _, r := range runs {
		if pos < r.length*cs {
			recOff = r.lcn*cs + pos
			return recOff, dataAttr(img[recOff : recOff+recSize])
		}
		pos -= r.length * cs
	}
	t.Fatalf("record %d is past the $MFT", ref)
	return 0, 0
}

// patched overlays replacement bytes on a reader.
type patched struct {
	r   io.ReaderAt
	off int64
	b   []byte
}

func (p *patched) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	for i := max(off, p.off); i < min(off+int64(n), p.off+int64(len(p.b))); i++ {
		b[i-off] = p.b[i-p.off]
	}
	return n, err
}

var errMetafile = errors.New("marker: the metafile guard must fire")

// TestNTFSFileExtentsDamaged edits pagefile.sys's MFT record: run lists that
// point into a metafile, at the boot sector, outside the volume, or claim
// compression are refused, and random damage never yields a range outside
// the volume or on metadata. What FileExtents returns is never backed up, so
// a wrong answer here would silently drop guest data.
func TestNTFSFileExtentsDamaged(t *testing.T) {
	p := buildPageImage(t)
	img, err := os.ReadFile(p.img)
	must(t, err)
	size := int64(len(img))
	g, err := Open(bytes.NewReader(img), size)
	must(t, err)
	st, err := g.Stat("pagefile.sys")
	must(t, err)
	g.Close()
	recOff, dataOff := ntfsRecord(t, img, int64(st.Ino))
	recSize := int64(1) << -int8(img[0x40])
	rec := img[recOff : recOff+recSize]
	runOff := dataOff + int64(binary.LittleEndian.Uint16(rec[dataOff+0x20:]))
	mftOff, mftData := ntfsRecord(t, img, 0)
	mftRec := img[mftOff:]
	mftRuns, err := decodeRunList(mftRec[mftData+int64(binary.LittleEndian.Uint16(mftRec[mftData+0x20:])):][:64], 100)
	must(t, err)

	extentsWith := func(edit func(rec []byte)) ([]Extent, error) {
		r := slices.Clone(rec)
		edit(r)
		g, err := Open(&patched{r: bytes.NewReader(img), off: recOff, b: r}, size)
		if err != nil {
			return nil, err
		}
		defer g.Close()
		return g.(Extenter).FileExtents("pagefile.sys")
	}
	// setFirstLCN rewrites the first run's LCN field in place (its width
	// is kept; the later runs are relative, so they move with it).
	setFirstLCN := func(lcn int64) func([]byte) {
		return func(r []byte) {
			h := r[runOff]
			ls, osz := int64(h&0xF), int64(h>>4)
			for k := int64(0); k < osz; k++ {
				r[runOff+1+ls+k] = byte(lcn >> (8 * k))
			}
		}
	}
	if ext, err := extentsWith(func([]byte) {}); err != nil || len(ext) < 3 {
		t.Fatalf("unedited record: %v, %v", ext, err)
	}
	for _, c := range []struct {
		name string
		edit func([]byte)
		want error
	}{
		{"runs into $MFT", setFirstLCN(mftRuns[0].lcn), errMetafile},
		{"runs at the boot sector", setFirstLCN(0), ErrCorrupt},
		{"runs past the volume", setFirstLCN(0x7F00), ErrCorrupt},
		{"compressed flag", func(r []byte) { r[dataOff+0x0C] |= 1 }, errors.ErrUnsupported},
		{"allocated size off by a cluster", func(r []byte) {
			binary.LittleEndian.PutUint64(r[dataOff+0x28:], binary.LittleEndian.Uint64(r[dataOff+0x28:])+4096)
		}, ErrCorrupt},
		{"last VCN too high", func(r []byte) {
			binary.LittleEndian.PutUint64(r[dataOff+0x18:], binary.LittleEndian.Uint64(r[dataOff+0x18:])+1)
		}, ErrCorrupt},
		{"no terminator", func(r []byte) {
			l := int64(binary.LittleEndian.Uint32(r[dataOff+4:]))
			for i := runOff; i < dataOff+l; i++ {
				if i%512 < 510 { // keep the update sequence intact
					r[i] = 0x11
				}
			}
		}, ErrCorrupt},
	} {
		ext, err := extentsWith(c.edit)
		if c.want == errMetafile {
			if err == nil || !strings.Contains(err.Error(), "with metafile record 0") {
				t.Errorf("%s: %v, %v; want the $MFT guard", c.name, ext, err)
			}
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, %v; want %v", c.name, ext, err, c.want)
		}
	}

	// Random damage to the run list and the attribute header.
	meta := slices.Clone(mftRuns)
	sortRuns(meta)
	rnd := rand.New(rand.NewPCG(1, 2))
	l := int64(binary.LittleEndian.Uint32(rec[dataOff+4:]))
	accepted := 0
	for trial := 0; trial < 300; trial++ {
		ext, err := extentsWith(func(r []byte) {
			for k := 0; k < 1+rnd.IntN(4); k++ {
				i := dataOff + rnd.Int64N(l)
				if i%512 < 510 {
					r[i] ^= byte(1 + rnd.IntN(255))
				}
			}
		})
		if err != nil {
			continue
		}
		var runs []dataRun
		for _, e := range ext {
			if e.Off < 4096 || e.Len <= 0 || e.End() > size {
				t.Fatalf("trial %d: extent %+v outside the volume", trial, e)
			}
			runs = append(runs, dataRun{lcn: e.Off / 4096, length: e.Len / 4096})
		}
		sortRuns(runs)
		if lcn, bad := overlap(runs, meta); bad {
			t.Fatalf("trial %d: extents %v cover $MFT cluster %d", trial, ext, lcn)
		}
		accepted++
	}
	t.Logf("random damage: %d of 300 records accepted", accepted)
}

// FuzzDecodeRunList: any bytes give runs or an error, never a panic, more
// runs than the cap, or a run without clusters.
func FuzzDecodeRunList(f *testing.F) {
	f.Add([]byte{0x21, 0x10, 0x00, 0x01, 0x01, 0x20, 0x11, 0x04, 0x10, 0})
	f.Add([]byte{0x88, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x81, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		runs, err := decodeRunList(b, 64)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		if len(runs) > 64 {
			t.Fatalf("%d runs past the cap", len(runs))
		}
		for _, r := range runs {
			if r.length <= 0 || (r.sparse && r.lcn != 0) {
				t.Fatalf("bad run %+v", r)
			}
		}
	})
}
