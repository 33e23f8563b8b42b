package part

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

var (
	typeBasic = mustGUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
	typeLinux = mustGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
	diskG     = mustGUID("01234567-89ab-cdef-0123-456789abcdef")
)

func craftGPT(size, ss int, entries []gptEntry) []byte {
	img := make([]byte, size)
	buildGPT(img, ss, diskG, entries)
	return img
}

func readBytes(img []byte, ss int) (*Table, error) {
	return Read(bytes.NewReader(img), int64(len(img)), ss)
}

// TestCraftedGPT checks numbering with gaps, inclusive LastLBA, names,
// attributes and GUID byte order on a table built in memory, at 512 and
// 4096 bytes per sector.
func TestCraftedGPT(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			id := mustGUID("aabbccdd-eeff-0011-2233-445566778899")
			img := craftGPT(4*mib, ss, []gptEntry{
				{Type: typeBasic, ID: id, First: 64, Last: 127, Name: "a"},
				{},
				{Type: typeLinux, First: 128, Last: 128, Attrs: 1 << 2, Name: "𝄞x"}, // surrogate pair
			})
			tb, err := readBytes(img, ss)
			if err != nil {
				t.Fatal(err)
			}
			want := []Partition{
				{Index: 1, Start: 64 * int64(ss), Size: 64 * int64(ss), Type: typeBasic.String(), TypeName: "Microsoft basic data", Name: "a", GUID: id},
				{Index: 3, Start: 128 * int64(ss), Size: int64(ss), Type: typeLinux.String(), TypeName: "Linux filesystem", Name: "𝄞x", Bootable: true},
			}
			if tb.Scheme != "gpt" || tb.SectorSize != ss || tb.DiskGUID != diskG || !equalParts(tb.Partitions, want) || len(tb.Warnings) != 0 {
				t.Fatalf("got %+v\nwant %+v", tb, want)
			}
		})
	}
}

// allocDuring reports the bytes allocated while f runs.
func allocDuring(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestGPTHostileHeaders: header fields that would make a naive parser
// allocate gigabytes, read outside the disk or trust a misplaced copy are
// rejected with named errors; with an intact backup the disk still reads.
// Each mutation is applied with a correct header CRC, so the field check
// itself is what catches it.
func TestGPTHostileHeaders(t *testing.T) {
	const ss = 512
	base := craftGPT(4*mib, ss, []gptEntry{{Type: typeBasic, First: 64, Last: 127}})
	lastOff := len(base) - ss
	mut := []struct {
		name string
		f    func(h []byte)
		err  error
	}{
		{"huge entry count", func(h []byte) { binary.LittleEndian.PutUint32(h[80:], math.MaxUint32) }, ErrGPTEntryArray},
		{"entry count over 1 MiB", func(h []byte) { binary.LittleEndian.PutUint32(h[80:], 8193) }, ErrGPTEntryArray},
		{"zero entry size", func(h []byte) { binary.LittleEndian.PutUint32(h[84:], 0) }, ErrGPTEntryArray},
		{"odd entry size", func(h []byte) { binary.LittleEndian.PutUint32(h[84:], 129) }, ErrGPTEntryArray},
		{"huge entry size", func(h []byte) { binary.LittleEndian.PutUint32(h[84:], 1<<31) }, ErrGPTEntryArray},
		{"entries beyond disk", func(h []byte) { binary.LittleEndian.PutUint64(h[72:], 1<<60) }, ErrGPTEntryArray},
		{"entries at LBA 0", func(h []byte) { binary.LittleEndian.PutUint64(h[72:], 0) }, ErrGPTEntryArray},
		{"entries over header", func(h []byte) { binary.LittleEndian.PutUint64(h[72:], 1) }, ErrGPTEntryArray},
		{"wrong MyLBA", func(h []byte) { binary.LittleEndian.PutUint64(h[24:], 7) }, ErrGPTHeaderLBA},
		{"header size huge", func(h []byte) { binary.LittleEndian.PutUint32(h[12:], math.MaxUint32) }, ErrGPTHeaderSize},
		{"header size small", func(h []byte) { binary.LittleEndian.PutUint32(h[12:], 91) }, ErrGPTHeaderSize},
	}
	for _, m := range mut {
		t.Run(m.name, func(t *testing.T) {
			img := bytes.Clone(base)
			m.f(img[ss : ss+92])
			rehashGPTHeader(img, ss)
			var tb *Table
			var err error
			if n := allocDuring(func() { tb, err = readBytes(img, ss) }); n > 4*mib {
				t.Errorf("allocated %d bytes", n)
			}
			if err != nil || len(tb.Partitions) != 1 || !hasWarning(tb, "using the backup") {
				t.Fatalf("primary broken, backup intact: tb %+v err %v", tb, err)
			}
			if !hasWarning(tb, strings.TrimPrefix(m.err.Error(), "part: ")) {
				t.Errorf("warning %q does not name %v", tb.Warnings, m.err)
			}
			// Same damage in the backup too: an error naming it.
			m.f(img[lastOff : lastOff+92])
			rehashGPTHeader(img, lastOff)
			if n := allocDuring(func() { tb, err = readBytes(img, ss) }); n > 4*mib {
				t.Errorf("allocated %d bytes", n)
			}
			if !errors.Is(err, m.err) || !errors.Is(err, vdisk.ErrCorrupt) || tb != nil {
				t.Fatalf("both broken: tb %+v err %v", tb, err)
			}
		})
	}
}

// TestGPTEntryGeometry: entries past the end are clipped, entries starting
// beyond it dropped, reversed or absurd ranges skipped — each with a
// warning, the rest of the table intact, no overflow on 2^64-1.
func TestGPTEntryGeometry(t *testing.T) {
	const ss = 512
	sectors := uint64(4 * mib / ss)
	img := craftGPT(4*mib, ss, []gptEntry{
		{Type: typeBasic, First: 64, Last: 127},
		{Type: typeBasic, First: sectors - 100, Last: sectors + 1000}, // clipped
		{Type: typeBasic, First: sectors + 5, Last: sectors + 10},     // dropped
		{Type: typeBasic, First: 200, Last: 100},                      // reversed
		{Type: typeBasic, First: 0, Last: math.MaxUint64},             // everything
		{Type: typeBasic, First: math.MaxUint64, Last: math.MaxUint64},
	})
	tb, err := readBytes(img, ss)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range tb.Partitions {
		got = append(got, fmt.Sprintf("%d:%d+%d", p.Index, p.Start, p.Size))
	}
	want := []string{"1:32768+32768", fmt.Sprintf("2:%d+%d", (sectors-100)*ss, 100*ss), fmt.Sprintf("5:0+%d", 4*mib)}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v want %v", got, want)
	}
	for _, w := range []string{"p2: LBA", "clipped", "p3: starts at LBA", "p4: last LBA 100 before first LBA 200", "p6: starts at LBA 18446744073709551615"} {
		if !hasWarning(tb, w) {
			t.Errorf("no warning %q in %q", w, tb.Warnings)
		}
	}
}

// TestMBRChain covers EBR rules (logical start relative to its EBR, link
// relative to the extended start), loops, the logical-count bound, a
// missing EBR signature and clipping, on tables built in memory.
func TestMBRChain(t *testing.T) {
	const ss = 512
	newMBR := func() []byte {
		img := make([]byte, 4*mib)
		mbrSlot(img, 0, 0, 0x80, 0x07, 64, 64)
		mbrSlot(img, 0, 1, 0, 0x0f, 1000, 4000)
		return img
	}
	ebr := func(img []byte, lba int64) int64 { return lba * ss }

	t.Run("relative offsets", func(t *testing.T) {
		img := newMBR()
		mbrSlot(img, ebr(img, 1000), 0, 0, 0x83, 10, 100)    // p5 at 1010
		mbrSlot(img, ebr(img, 1000), 1, 0, 0x05, 500, 300)   // next EBR at 1000+500
		mbrSlot(img, ebr(img, 1500), 0, 0x80, 0x07, 20, 200) // p6 at 1520
		mbrSlot(img, ebr(img, 1500), 1, 0, 0x05, 800, 100)   // next EBR at 1000+800, not 1500+800
		mbrSlot(img, ebr(img, 1800), 0, 0, 0x0c, 5, 50)      // p7 at 1805
		tb, err := readBytes(img, ss)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range tb.Partitions {
			got = append(got, fmt.Sprintf("%d:%d+%d:%s:%v", p.Index, p.Start/ss, p.Size/ss, p.Type, p.Bootable))
		}
		want := "1:64+64:0x07:true 2:1000+4000:0x0f:false 5:1010+100:0x83:false 6:1520+200:0x07:true 7:1805+50:0x0c:false"
		if strings.Join(got, " ") != want || len(tb.Warnings) != 0 {
			t.Errorf("got %v\nwant %v\nwarnings %q", got, want, tb.Warnings)
		}
	})
	t.Run("self loop", func(t *testing.T) {
		img := newMBR()
		mbrSlot(img, ebr(img, 1000), 0, 0, 0x83, 10, 100)
		mbrSlot(img, ebr(img, 1000), 1, 0, 0x05, 0, 300) // points at itself
		_, err := readBytes(img, ss)
		if !errors.Is(err, ErrMBRChainLoop) || !errors.Is(err, vdisk.ErrCorrupt) || err.Error() != "part: mbr: extended chain loop at LBA 1000" {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("two-step loop", func(t *testing.T) {
		img := newMBR()
		mbrSlot(img, ebr(img, 1000), 1, 0, 0x05, 100, 300) // -> 1100
		mbrSlot(img, ebr(img, 1100), 1, 0, 0x05, 0, 300)   // -> 1000
		_, err := readBytes(img, ss)
		if !errors.Is(err, ErrMBRChainLoop) || !strings.HasSuffix(err.Error(), "at LBA 1000") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("too many logicals", func(t *testing.T) {
		img := newMBR()
		mbrSlot(img, 0, 1, 0, 0x0f, 1000, 7000)
		for i := int64(0); i < 200; i++ {
			lba := 1000 + 2*i
			mbrSlot(img, ebr(img, lba), 0, 0, 0x83, 1, 1)
			mbrSlot(img, ebr(img, lba), 1, 0, 0x05, uint32(2*(i+1)), 2)
		}
		_, err := readBytes(img, ss)
		if !errors.Is(err, ErrMBRTooManyLogicals) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("no EBR signature", func(t *testing.T) {
		img := newMBR()
		mbrSlot(img, ebr(img, 1000), 0, 0, 0x83, 10, 100)
		mbrSlot(img, ebr(img, 1000), 1, 0, 0x05, 500, 300)
		tb, err := readBytes(img, ss) // EBR at 1500 is all zeros
		if err != nil || len(tb.Partitions) != 3 || !hasWarning(tb, "EBR at LBA 1500 has no 55 AA") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("clip and drop", func(t *testing.T) {
		img := newMBR()
		sectors := uint32(len(img) / ss)
		mbrSlot(img, 0, 2, 0, 0x83, sectors-10, 100)   // clipped
		mbrSlot(img, 0, 3, 0, 0x83, sectors+10, 100)   // dropped
		mbrSlot(img, ebr(img, 1000), 0, 0, 0x83, 0, 0) // empty logical slot
		tb, err := readBytes(img, ss)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := byIndex(tb, 3); !ok || p.Size != 10*ss || !hasWarning(tb, "p3: LBA") {
			t.Errorf("p3 %+v warnings %q", p, tb.Warnings)
		}
		if _, ok := byIndex(tb, 4); ok || !hasWarning(tb, "p4: starts at LBA") {
			t.Errorf("p4 not dropped: %q", tb.Warnings)
		}
	})
}

// TestSectorZeroDiscrimination: MBR versus boot sector versus nothing.
func TestSectorZeroDiscrimination(t *testing.T) {
	const size = 4 * mib
	fat := func() []byte {
		img := make([]byte, size)
		img[0], img[1], img[2] = 0xEB, 0x58, 0x90
		copy(img[82:], "FAT32   ")
		img[510], img[511] = 0x55, 0xAA
		return img
	}
	t.Run("FAT VBR with empty entry area", func(t *testing.T) {
		tb, err := readBytes(fat(), 512)
		if err != nil || tb.Scheme != "none" || tb.Partitions[0].TypeName != "FAT32" {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("FAT VBR with garbage entries", func(t *testing.T) {
		img := fat()
		copy(img[0x1BE:], "Press any key to restart\r\n and so on and on and on ...")
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "none" || tb.Partitions[0].TypeName != "FAT32" {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("MBR with stale BPB", func(t *testing.T) {
		img := fat()
		mbrSlot(img, 0, 0, 0x80, 0x0c, 2048, 4096)
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "mbr" || len(tb.Partitions) != 1 || !hasWarning(tb, "boot-sector signature") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("FAT VBR with one impossible entry", func(t *testing.T) {
		img := fat()
		mbrSlot(img, 0, 0, 0x00, 0x0c, 2048, 1<<30) // larger than the disk
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "none" {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("empty MBR", func(t *testing.T) {
		img := make([]byte, size)
		img[510], img[511] = 0x55, 0xAA
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "mbr" || len(tb.Partitions) != 0 {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("MBR with every entry beyond the disk", func(t *testing.T) {
		img := make([]byte, size)
		mbrSlot(img, 0, 0, 0, 0x07, 1<<30, 100)
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "mbr" || len(tb.Partitions) != 0 || !hasWarning(tb, "p1: starts at LBA 1073741824") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("55 AA with bad boot indicators", func(t *testing.T) {
		img := make([]byte, size)
		img[510], img[511] = 0x55, 0xAA
		img[0x1BE] = 0x42
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "none" || !hasWarning(tb, "boot indicator 0x42") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("zeroed disk", func(t *testing.T) {
		tb, err := readBytes(make([]byte, size), 512)
		if err != nil || tb.Scheme != "none" || tb.Partitions[0] != (Partition{Size: size}) || !hasWarning(tb, "no partition table") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("GPT without protective MBR", func(t *testing.T) {
		img := craftGPT(size, 512, []gptEntry{{Type: typeBasic, First: 64, Last: 127}})
		clear(img[:512])
		tb, err := readBytes(img, 512)
		if err != nil || tb.Scheme != "gpt" || !hasWarning(tb, "protective MBR missing") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
	t.Run("protective MBR but no GPT", func(t *testing.T) {
		img := craftGPT(size, 512, nil)
		clear(img[512:])
		_, err := readBytes(img, 512)
		if !errors.Is(err, ErrGPTNoSignature) {
			t.Fatalf("err %v", err)
		}
	})
}

type failingReader struct{}

var errDisk = errors.New("disk on fire")

func (failingReader) ReadAt([]byte, int64) (int, error) { return 0, errDisk }

// TestBadInputs: sizes, sector sizes, short and failing readers, a GPT
// image cut after 64 KiB: errors or warnings, never panics.
func TestBadInputs(t *testing.T) {
	if _, err := Read(bytes.NewReader(nil), 0, 512); !errors.Is(err, ErrDiskSize) {
		t.Errorf("size 0: %v", err)
	}
	if _, err := Read(bytes.NewReader(make([]byte, 100)), 100, 512); !errors.Is(err, ErrDiskSize) {
		t.Errorf("size 100: %v", err)
	}
	if _, err := Read(bytes.NewReader(make([]byte, 4096)), 4096, 777); !errors.Is(err, ErrSectorSize) {
		t.Errorf("sector 777: %v", err)
	}
	// The reader is shorter than the size claimed: an I/O error, not "corrupt".
	_, err := Read(bytes.NewReader(make([]byte, 1000)), mib, 512)
	if !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, vdisk.ErrCorrupt) {
		t.Errorf("short reader: %v", err)
	}
	if _, err := Read(failingReader{}, mib, 512); !errors.Is(err, errDisk) {
		t.Errorf("failing reader: %v", err)
	}
	// A GPT whose backup half reads fail: I/O errors are not papered over.
	img := craftGPT(4*mib, 512, []gptEntry{{Type: typeBasic, First: 64, Last: 127}})
	flipByte(img, 512+40)
	if _, err := Read(io.NewSectionReader(bytes.NewReader(img), 0, 64<<10), 4*mib, 512); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("GPT backup unreadable: %v", err)
	}

	// The first 64 KiB of a GPT disk, read as a disk of its own: the
	// primary is intact, its backup location and partition are not.
	img = craftGPT(4*mib, 512, []gptEntry{{Type: typeBasic, First: 64, Last: 127}, {Type: typeBasic, First: 2048, Last: 4095}})
	tb, err := readBytes(img[:64<<10], 512)
	if err != nil || len(tb.Partitions) != 1 || !hasWarning(tb, "backup GPT location") || !hasWarning(tb, "larger disk") || !hasWarning(tb, "p2: starts at LBA 2048") {
		t.Errorf("cut GPT: %+v %v", tb, err)
	}
}

func flipByte(b []byte, off int) { b[off] ^= 0x10 }

// TestGPTGrownDisk: a 2 MiB GPT disk expanded to 4 MiB (as after a VHDX
// resize) keeps its backup at the old end. It is found through the primary
// header's AlternateLBA, with a warning, also when the primary entries are
// damaged and the last LBA holds nothing.
func TestGPTGrownDisk(t *testing.T) {
	small := craftGPT(2*mib, 512, []gptEntry{{Type: typeBasic, First: 64, Last: 127}})
	img := append(small, make([]byte, 2*mib)...)
	tb, err := readBytes(img, 512)
	if err != nil || len(tb.Partitions) != 1 || !hasWarning(tb, "backup GPT at LBA 4095, not at the last LBA 8191") {
		t.Fatalf("grown: %+v %v", tb, err)
	}
	flipByte(img, 1024+40) // primary entries
	tb, err = readBytes(img, 512)
	if err != nil || len(tb.Partitions) != 1 || !hasWarning(tb, "using the backup at LBA 4095") {
		t.Fatalf("grown, primary entries bad: %+v %v", tb, err)
	}
}
