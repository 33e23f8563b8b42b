package part

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// run executes a tool and fails the test with its output on error.
func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s%s", name, args, err, out.String(), errb.String())
	}
	return out.String()
}

// newImage returns the path of a sparse file of size bytes in t.TempDir().
func newImage(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// readImage parses the image at path with the given sector size.
func readImage(t *testing.T, path string, ss int) (*Table, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return Read(f, fi.Size(), ss)
}

func mustRead(t *testing.T, path string, ss int) *Table {
	t.Helper()
	tb, err := readImage(t, path, ss)
	if err != nil {
		t.Fatalf("Read(%s): %v", filepath.Base(path), err)
	}
	return tb
}

// patch overwrites bytes of the image at off.
func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// flip inverts one bit of the byte at off.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	patch(t, path, off, []byte{b[0] ^ 0x10})
}

// copyFile copies src into t.TempDir(), writing only non-zero 4 KiB blocks
// so the copies of multi-MiB test disks stay sparse and cheap.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := newImage(t, filepath.Base(src), int64(len(b)))
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zero := make([]byte, 4096)
	for off := 0; off < len(b); off += 4096 {
		blk := b[off:min(off+4096, len(b))]
		if !bytes.Equal(blk, zero[:len(blk)]) {
			if _, err := f.WriteAt(blk, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

// sfdiskPart is one partition as `sfdisk --json` reports it. Its node
// suffix is the Linux partition number, the independent oracle for Index.
type sfdiskPart struct {
	Node     string `json:"node"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	Type     string `json:"type"`
	UUID     string `json:"uuid"`
	Name     string `json:"name"`
	Attrs    string `json:"attrs"`
	Bootable bool   `json:"bootable"`
}

type sfdiskTable struct {
	Label      string       `json:"label"`
	ID         string       `json:"id"`
	SectorSize int          `json:"sectorsize"`
	Partitions []sfdiskPart `json:"partitions"`
}

func sfdiskJSON(t *testing.T, path string) sfdiskTable {
	t.Helper()
	var v struct {
		PT sfdiskTable `json:"partitiontable"`
	}
	if err := json.Unmarshal([]byte(run(t, "", "sfdisk", "--json", path)), &v); err != nil {
		t.Fatal(err)
	}
	return v.PT
}

// nodeIndex extracts N from ".../disk.rawN".
func nodeIndex(t *testing.T, node string) int {
	t.Helper()
	m := regexp.MustCompile(`(\d+)$`).FindString(node)
	n, err := strconv.Atoi(m)
	if err != nil {
		t.Fatalf("node %q: %v", node, err)
	}
	return n
}

// mmlsPart is one non-meta line of mmls output, in mmls sectors.
type mmlsPart struct {
	Table, Slot int // GPT: Table 0, Slot = entry index (0-based); DOS: table #, slot
	Start, Len  int64
	Desc        string
}

var mmlsLine = regexp.MustCompile(`^\d+:\s+(\d+)(?::(\d+))?\s+(\d+)\s+(\d+)\s+(\d+)\s*(.*)$`)

// mmls runs sleuthkit's mmls and returns the data partitions (Meta and
// unallocated lines dropped). For DOS tables the first number is the table
// (0 = MBR, n = n-th EBR) and the second the slot.
func mmls(t *testing.T, path string, blockSize int) []mmlsPart {
	t.Helper()
	var ps []mmlsPart
	for _, l := range strings.Split(run(t, "", "mmls", "-b", strconv.Itoa(blockSize), path), "\n") {
		m := mmlsLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		p := mmlsPart{Desc: m[6]}
		if m[2] != "" {
			p.Table, _ = strconv.Atoi(m[1])
			p.Slot, _ = strconv.Atoi(m[2])
		} else {
			p.Slot, _ = strconv.Atoi(m[1])
		}
		p.Start, _ = strconv.ParseInt(m[3], 10, 64)
		p.Len, _ = strconv.ParseInt(m[5], 10, 64)
		ps = append(ps, p)
	}
	return ps
}

func byIndex(tb *Table, idx int) (Partition, bool) {
	for _, p := range tb.Partitions {
		if p.Index == idx {
			return p, true
		}
	}
	return Partition{}, false
}

// ---- crafted tables (no tools needed) ----

// gptEntry is what buildGPT writes into one entry slot.
type gptEntry struct {
	Type, ID    vdisk.GUID
	First, Last uint64
	Attrs       uint64
	Name        string
}

// buildGPT writes a protective MBR, primary and backup GPT into img (whose
// length is the disk size) with the given sector size and entries (slot
// i = entries[i]; a zero Type leaves the slot empty).
func buildGPT(img []byte, ss int, diskGUID vdisk.GUID, entries []gptEntry) {
	le := binary.LittleEndian
	sectors := uint64(len(img) / ss)
	const num, esz = 128, 128
	arr := make([]byte, num*esz)
	for i, e := range entries {
		if e.Type.IsZero() {
			continue
		}
		b := arr[i*esz:]
		tm, im := e.Type.Mixed(), e.ID.Mixed()
		copy(b[0:], tm[:])
		copy(b[16:], im[:])
		le.PutUint64(b[32:], e.First)
		le.PutUint64(b[40:], e.Last)
		le.PutUint64(b[48:], e.Attrs)
		for j, c := range utf16.Encode([]rune(e.Name)) {
			if j < 36 {
				le.PutUint16(b[56+2*j:], c)
			}
		}
	}
	arraySectors := uint64(num * esz / ss)
	// protective MBR
	mbr := img[:512]
	mbr[0x1BE+4] = 0xEE
	le.PutUint32(mbr[0x1BE+8:], 1)
	le.PutUint32(mbr[0x1BE+12:], uint32(min(sectors-1, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA
	write := func(lba, alt, entryLBA uint64) {
		copy(img[entryLBA*uint64(ss):], arr)
		h := img[lba*uint64(ss) : lba*uint64(ss)+92]
		copy(h, "EFI PART")
		le.PutUint32(h[8:], 0x00010000)
		le.PutUint32(h[12:], 92)
		le.PutUint64(h[24:], lba)
		le.PutUint64(h[32:], alt)
		le.PutUint64(h[40:], 2+arraySectors)
		le.PutUint64(h[48:], sectors-2-arraySectors)
		dg := diskGUID.Mixed()
		copy(h[56:], dg[:])
		le.PutUint64(h[72:], entryLBA)
		le.PutUint32(h[80:], num)
		le.PutUint32(h[84:], esz)
		le.PutUint32(h[88:], crc32.ChecksumIEEE(arr))
		le.PutUint32(h[16:], 0)
		le.PutUint32(h[16:], crc32.ChecksumIEEE(h))
	}
	write(1, sectors-1, 2)
	write(sectors-1, 1, sectors-1-arraySectors)
}

// rehashGPTHeader recomputes the header CRC of the header at off (after a
// test changed a field on purpose, so only that field is "wrong").
func rehashGPTHeader(img []byte, off int) {
	h := img[off : off+92]
	binary.LittleEndian.PutUint32(h[16:], 0)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h))
}

// mbrSlot writes MBR/EBR slot i of the sector at img[off:].
func mbrSlot(img []byte, off int64, i int, status, typ byte, start, count uint32) {
	b := img[off+0x1BE+int64(16*i):]
	b[0], b[4] = status, typ
	binary.LittleEndian.PutUint32(b[8:], start)
	binary.LittleEndian.PutUint32(b[12:], count)
	img[off+510], img[off+511] = 0x55, 0xAA
}

func mustGUID(s string) vdisk.GUID {
	g, err := vdisk.ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}
