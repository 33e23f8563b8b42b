package part

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
)

// sparseDisk is a disk of size bytes holding head at offset 0 and tail
// ending at the last byte, zeros elsewhere. It lets a fuzz input of a few
// KiB stand for a real multi-MiB disk whose tables live at both ends (the
// seeds are the first and last 64 KiB of real images).
type sparseDisk struct {
	head, tail []byte
	size       int64
}

func newSparseDisk(data []byte, split uint32, size int64) *sparseDisk {
	s := min(int(split), len(data))
	d := &sparseDisk{head: data[:s], tail: data[s:], size: size}
	if int64(len(d.tail)) > size {
		d.tail = d.tail[int64(len(d.tail))-size:]
	}
	return d
}

func (d *sparseDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= d.size {
		return 0, io.EOF
	}
	n := len(p)
	if rem := d.size - off; int64(n) > rem {
		n = int(rem)
	}
	clear(p[:n])
	place := func(b []byte, at int64) {
		lo, hi := max(at, off), min(at+int64(len(b)), off+int64(n))
		if lo < hi {
			copy(p[lo-off:hi-off], b[lo-at:hi-at])
		}
	}
	place(d.tail, d.size-int64(len(d.tail)))
	place(d.head, 0) // head wins where both overlap on tiny disks
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fuzzDiskSize keeps the disk size plausible (up to 64 TiB) but lets the
// fuzzer choose it, since every bound in the parser depends on it.
func fuzzDiskSize(size int64) int64 {
	if size < 0 {
		size = -(size + 1)
	}
	return size % (64 << 40)
}

// checkTable asserts what must hold for any input: an error carries the
// package prefix, and a table has a known scheme, unique numbers in the
// right ranges and partitions inside the disk.
func checkTable(t *testing.T, tb *Table, err error, size int64) {
	if err != nil {
		if tb != nil {
			t.Fatalf("table and error: %v", err)
		}
		if !strings.HasPrefix(err.Error(), "part: ") {
			t.Fatalf("error without prefix: %v", err)
		}
		return
	}
	seen := map[int]bool{}
	for _, p := range tb.Partitions {
		if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > size || p.Start+p.Size < p.Start {
			t.Fatalf("partition outside disk of %d: %+v", size, p)
		}
		if seen[p.Index] {
			t.Fatalf("duplicate index %d", p.Index)
		}
		seen[p.Index] = true
		switch tb.Scheme {
		case "gpt":
			ok := p.Index >= 1 && p.Index <= maxEntryArray/128
			if !ok {
				t.Fatalf("gpt index %d", p.Index)
			}
		case "mbr":
			if p.Index < 1 || (p.Index > 4 && p.Index < 5) || p.Index > 4+maxLogicals {
				t.Fatalf("mbr index %d", p.Index)
			}
		case "none":
			if len(tb.Partitions) != 1 || p.Index != 0 || p.Start != 0 || p.Size != size {
				t.Fatalf("none: %+v", tb.Partitions)
			}
		default:
			t.Fatalf("scheme %q", tb.Scheme)
		}
	}
	if tb.SectorSize != 512 && tb.SectorSize != 4096 {
		t.Fatalf("sector size %d", tb.SectorSize)
	}
}

func fuzzRead(t *testing.T, data []byte, split uint32, size int64, sector4k bool) {
	size = fuzzDiskSize(size)
	ss := 512
	if sector4k {
		ss = 4096
	}
	tb, err := Read(newSparseDisk(data, split, size), size, ss)
	checkTable(t, tb, err, size)
}

// addCraftedSeeds gives both targets tool-free seeds, so the fuzzers start
// from valid structures even without the committed corpus.
func addCraftedSeeds(f *testing.F, gpt bool) {
	if gpt {
		for _, ss := range []int{512, 4096} {
			img := craftGPT(2*mib, ss, []gptEntry{{Type: typeBasic, First: 64, Last: 127, Name: "x"}, {}, {Type: typeLinux, First: 128, Last: 300}})
			head, tail := img[:64<<10], img[len(img)-64<<10:]
			f.Add(append(bytes.Clone(head), tail...), uint32(len(head)), int64(len(img)), ss == 4096)
		}
		return
	}
	img := make([]byte, 64<<10)
	mbrSlot(img, 0, 0, 0x80, 0x07, 8, 8)
	mbrSlot(img, 0, 1, 0, 0x0f, 20, 100)
	mbrSlot(img, 20*512, 0, 0, 0x83, 2, 10)
	mbrSlot(img, 20*512, 1, 0, 0x05, 30, 20)
	mbrSlot(img, 50*512, 0, 0, 0x07, 1, 10)
	f.Add(img, uint32(len(img)), int64(4*mib), false)
}

// FuzzGPT feeds GPT-shaped disks (seeds: sgdisk and fdisk -b 4096 tables,
// head and tail) through Read, and through readGPT directly so that
// mutations of the protective MBR do not divert every input elsewhere.
func FuzzGPT(f *testing.F) {
	addCraftedSeeds(f, true)
	f.Fuzz(func(t *testing.T, data []byte, split uint32, size int64, sector4k bool) {
		fuzzRead(t, data, split, size, sector4k)
		size = fuzzDiskSize(size)
		ss := 512
		if sector4k {
			ss = 4096
		}
		if size >= 3*int64(ss) {
			tb, _, err := readGPT(newSparseDisk(data, split, size), size, ss)
			checkTable(t, tb, err, size)
		}
	})
}

// FuzzMBR feeds MBR-shaped disks (seeds: sfdisk tables with extended and
// logical partitions) through Read, and through readMBR directly, skipping
// the plausibility gate, so the EBR walker sees every mutated chain.
func FuzzMBR(f *testing.F) {
	addCraftedSeeds(f, false)
	f.Fuzz(func(t *testing.T, data []byte, split uint32, size int64, sector4k bool) {
		fuzzRead(t, data, split, size, sector4k)
		size = fuzzDiskSize(size)
		ss := 512
		if sector4k {
			ss = 4096
		}
		if size >= 512 {
			r := newSparseDisk(data, split, size)
			mbr := make([]byte, 512)
			if _, err := r.ReadAt(mbr, 0); err == nil {
				tb, err := readMBR(r, size, ss, mbr)
				checkTable(t, tb, err, size)
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed corpus under
// testdata/fuzz from real tools: VMVAULT_WRITE_FUZZ_SEEDS=1 go test -run
// TestWriteFuzzSeeds ./vhdxfs/part. Each seed is the first 64 KiB (zero tail
// trimmed) and the last 64 KiB (zero head trimmed) of a small image.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VMVAULT_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set VMVAULT_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	testenv.NeedTools(t, "sgdisk", "sfdisk", "fdisk", "mkfs.vfat")
	write := func(target, name, path string, sector4k bool) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		const w = 64 << 10
		head := bytes.TrimRight(b[:min(w, len(b))], "\x00")
		tail := bytes.TrimLeft(b[max(0, len(b)-w):], "\x00")
		data := append(bytes.Clone(head), tail...)
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint32(%d)\nint64(%d)\nbool(%v)\n", data, len(head), len(b), sector4k)
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("FuzzGPT", "sgdisk-64M", makeSgdiskGPT(t), false)
	p4k := newImage(t, "gpt4k.raw", 16*mib)
	run(t, "g\nn\n1\n256\n+2M\nt\n1\nn\n2\n\n+4M\nx\nn\n2\nDaten ä\nr\nw\n", "fdisk", "-b", "4096", p4k)
	write("FuzzGPT", "fdisk-4kn-16M", p4k, true)
	// Compact tables (8 entries) keep seeds small: the fuzz engine's
	// minimisation and mutation cost grows with input size.
	small := newImage(t, "gpt-small.raw", 1*mib)
	run(t, "", "sgdisk", "-o", "-S", "8", "-n1:0:+100K", "-t1:ef00", "-n2:0:0", "-c2:ü", "-A2:set:2", small)
	write("FuzzGPT", "sgdisk-8entries-1M", small, false)
	k8 := newImage(t, "gpt4k-small.raw", 4*mib)
	run(t, "g\nx\nl\n8\nr\nn\n1\n\n+256K\nn\n2\n\n\nw\n", "fdisk", "-b", "4096", k8)
	write("FuzzGPT", "fdisk-4kn-8entries-4M", k8, true)

	write("FuzzMBR", "sfdisk-64M", makeSfdiskMBR(t), false)
	m := newImage(t, "mbr-small.raw", 1*mib)
	run(t, "label: dos\nstart=4, size=2, type=7, bootable\nstart=6, size=2, type=c\n"+
		"start=8, size=20, type=5\nstart=9, size=2, type=83\nstart=12, size=2, type=7\nstart=15, size=2, type=b\n", "sfdisk", "-q", m)
	write("FuzzMBR", "sfdisk-ebr-1M", m, false)
	fat := newImage(t, "fat.raw", 40*mib)
	run(t, "", "mkfs.vfat", "-F", "32", "-s", "1", fat)
	write("FuzzMBR", "vfat-whole-disk", fat, false)
}

// TestFuzzSeedsAreRealTables checks that the committed seeds, rebuilt as
// sparse disks, still parse to the tables the tools made — so the fuzzers
// start from valid GPT/MBR structures, not from noise.
func TestFuzzSeedsAreRealTables(t *testing.T) {
	want := map[string]string{
		"FuzzGPT/sgdisk-64M":            "gpt 1,2,3,5",
		"FuzzGPT/fdisk-4kn-16M":         "gpt 1,2",
		"FuzzGPT/sgdisk-8entries-1M":    "gpt 1,2",
		"FuzzGPT/fdisk-4kn-8entries-4M": "gpt 1,2",
		"FuzzMBR/sfdisk-64M":            "mbr 1,2,3", // EBR at 10 MiB is not in the seed
		"FuzzMBR/sfdisk-ebr-1M":         "mbr 1,2,3,5,6,7",
		"FuzzMBR/vfat-whole-disk":       "none 0",
	}
	for name, w := range want {
		b, err := os.ReadFile(filepath.Join("testdata", "fuzz", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		var data string
		var split uint32
		var size int64
		var s4k bool
		if len(lines) < 5 || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: bad corpus file", name)
		}
		data, err = strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		fmt.Sscanf(lines[2], "uint32(%d)", &split)
		fmt.Sscanf(lines[3], "int64(%d)", &size)
		fmt.Sscanf(lines[4], "bool(%t)", &s4k)
		ss := 512
		if s4k {
			ss = 4096
		}
		tb, err := Read(newSparseDisk([]byte(data), split, size), size, ss)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var idx []string
		for _, p := range tb.Partitions {
			idx = append(idx, strconv.Itoa(p.Index))
		}
		if got := tb.Scheme + " " + strings.Join(idx, ","); got != w {
			t.Errorf("%s: %s, want %s (warnings %q)", name, got, w, tb.Warnings)
		}
	}
}
