package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// rdtCleanImage returns a qemu-made file and its Info.
func rdtCleanImage(t testing.TB) ([]byte, *Info) {
	t.Helper()
	p, _ := rdtQemuImage(t, t.TempDir())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return b, info
}

// rdtItemOff returns the file offset of the metadata item id.
func rdtItemOff(t testing.TB, info *Info, id vdisk.GUID) int {
	for _, it := range info.Metadata.Items {
		if it.ID == id {
			return int(info.MetaRegion.FileOffset) + int(it.Offset)
		}
	}
	t.Fatalf("no item %s", id)
	return 0
}

// rdtExercise opens b and, if that works, reads it all: it must not panic,
// and any error must carry the "vhdx: " prefix.
func rdtExercise(t testing.TB, b []byte) error {
	t.Helper()
	d, err := rdtOpenBytes(b)
	if err != nil {
		if !strings.HasPrefix(err.Error(), "vhdx: ") {
			t.Errorf("error without prefix: %v", err)
		}
		return err
	}
	defer d.Close()
	// Read a 256 KiB window in every MiB: every block, cheaply.
	buf := make([]byte, 256*1024)
	for off := int64(0); off < d.Size(); off += MiB {
		if _, err := d.ReadAt(buf, off); err != nil && err.Error() != "EOF" {
			return err
		}
	}
	d.Allocated()
	return nil
}

// TestReaderTruncated cuts a valid file at many lengths: every cut must be
// refused with a named error (the last payload block reaches EOF, so no
// prefix of the file is valid).
func TestReaderTruncated(t *testing.T) {
	file, _ := rdtCleanImage(t)
	lengths := []int{0, 1, 7, 8, 4096, Header1Offset + 100, Header2Offset + HeaderSize, RegionTable1Off + 10,
		RegionTable2Off + RegionTableSize, MiB - 1, MiB, MiB + 4096, 2 * MiB, 2*MiB + 8, 3 * MiB, 3*MiB + 64*1024 + 4, 4 * MiB}
	for l := 4 * MiB; l < len(file); l += 512 * 1024 {
		lengths = append(lengths, l, l+1)
	}
	lengths = append(lengths, len(file)-1)
	for _, n := range lengths {
		err := rdtExercise(t, file[:n])
		if err == nil || !errors.Is(err, vdisk.ErrCorrupt) {
			t.Errorf("truncated to %d: err %v", n, err)
		}
	}
}

// TestReaderBitFlips flips random bits inside each structure. CRC-protected
// copies fall back or fail by name; unprotected metadata and BAT may still
// open. Nothing may panic, and a read that opens must stay within the file.
func TestReaderBitFlips(t *testing.T) {
	file, info := rdtCleanImage(t)
	areas := []struct {
		name     string
		off, len int
		prefix   string
	}{
		{"file id", 0, 8, "vhdx: file:"},
		{"headers", Header1Offset, Header2Offset + HeaderSize - Header1Offset, "vhdx: header:"},
		{"region tables", RegionTable1Off, 2 * RegionTableSize, "vhdx: region table:"},
		{"metadata table", int(info.MetaRegion.FileOffset), 32 + 32*len(info.Metadata.Items), "vhdx: metadata:"},
		{"metadata items", int(info.MetaRegion.FileOffset) + 64*1024, 40, "vhdx: metadata:"},
		{"bat", int(info.BATRegion.FileOffset), int(info.BAT.Entries) * 8, "vhdx: bat:"},
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for _, a := range areas {
		named := 0
		for range 80 {
			b := bytes.Clone(file)
			for range 1 + rng.IntN(3) {
				b[a.off+rng.IntN(a.len)] ^= 1 << rng.IntN(8)
			}
			if err := rdtExercise(t, b); err != nil {
				if strings.HasPrefix(err.Error(), a.prefix) {
					named++
				} else if a.name != "headers" && a.name != "region tables" {
					t.Logf("%s: %v", a.name, err)
				}
			}
		}
		if named == 0 {
			t.Errorf("%s: no flip gave an error naming the structure (%q)", a.name, a.prefix)
		}
	}
}

// TestReaderHostileFields sets single fields to hostile values and checks
// the named error; none may allocate by the field's value.
func TestReaderHostileFields(t *testing.T) {
	file, info := rdtCleanImage(t)
	le := binary.LittleEndian
	meta := int(info.MetaRegion.FileOffset)
	bat := int(info.BATRegion.FileOffset)
	fp := rdtItemOff(t, info, MetaFileParameters)
	vs := rdtItemOff(t, info, MetaVirtualSize)
	lss := rdtItemOff(t, info, MetaLogicalSector)
	regions := func(edit func(r []byte)) func([]byte) {
		return func(b []byte) {
			for _, r := range []int{RegionTable1Off, RegionTable2Off} {
				edit(b[r:])
				rdtFixCRC(b, r, RegionTableSize)
			}
		}
	}
	// Index of the first FULLY_PRESENT BAT entry.
	firstPresent := 0
	for ; firstPresent < int(info.BAT.Entries); firstPresent++ {
		if batState(le.Uint64(file[bat+8*firstPresent:])) == PayloadFullyPresent {
			break
		}
	}
	for _, c := range []struct {
		name string
		edit func(b []byte)
		want string
	}{
		{"block size 0", func(b []byte) { le.PutUint32(b[fp:], 0) }, "vhdx: metadata: block size 0 is not a power of 2"},
		{"block size 3", func(b []byte) { le.PutUint32(b[fp:], 3) }, "vhdx: metadata: block size 3"},
		{"block size 512M", func(b []byte) { le.PutUint32(b[fp:], 512*MiB) }, "vhdx: metadata: block size 536870912"},
		{"block size 3M", func(b []byte) { le.PutUint32(b[fp:], 3*MiB) }, "vhdx: metadata: block size"},
		{"virtual size > 64 TiB", func(b []byte) { le.PutUint64(b[vs:], MaxVirtualSize+512) }, "vhdx: metadata: virtual size 70368744178176 exceeds 64 TiB"},
		{"virtual size 2^63", func(b []byte) { le.PutUint64(b[vs:], 1<<63) }, "vhdx: metadata: virtual size"},
		{"virtual size not sector multiple", func(b []byte) { le.PutUint64(b[vs:], 24*MiB+100) }, "vhdx: metadata: virtual size"},
		{"virtual size 64 TiB, BAT 1 MiB", func(b []byte) { le.PutUint64(b[vs:], MaxVirtualSize) }, "vhdx: bat: region of 1048576 bytes is too small"},
		{"sector size 1024", func(b []byte) { le.PutUint32(b[lss:], 1024) }, "vhdx: metadata: sector sizes 1024/512"},
		{"metadata entry count", func(b []byte) { le.PutUint16(b[meta+10:], 0xffff) }, "vhdx: metadata: 65535 entries"},
		{"metadata item huge", func(b []byte) { le.PutUint32(b[meta+32+20:], 0xffffffff) }, "vhdx: metadata: item caa16737-fa36-4d43-b3b6-33f0aa44e76b is 4294967295 bytes"},
		{"metadata item outside", func(b []byte) { le.PutUint32(b[meta+32+16:], MiB-4) }, "vhdx: metadata: item caa16737-fa36-4d43-b3b6-33f0aa44e76b at 0xffffc length 8 lies outside"},
		{"metadata unknown required", func(b []byte) { b[meta+32] ^= 0xff; le.PutUint32(b[meta+32+24:], 4) }, "vhdx: metadata: unknown required item"},
		{"metadata unknown optional", func(b []byte) {
			// A sixth, empty (offset=length=0) item nobody knows, not required.
			copy(b[meta+32+5*32:], []byte{9, 9, 9})
			le.PutUint16(b[meta+10:], 6)
		}, ""},
		{"metadata missing item", func(b []byte) { le.PutUint16(b[meta+10:], 1) }, "vhdx: metadata: missing"},
		{"metadata signature", func(b []byte) { b[meta] = 'X' }, "vhdx: metadata: bad signature"},
		{"region entry count", regions(func(r []byte) { le.PutUint32(r[8:], 0x7fffffff) }), "vhdx: region table: 2147483647 entries"},
		{"region unknown required", regions(func(r []byte) { r[16] ^= 0xff; le.PutUint32(r[16+28:], 1) }), "vhdx: region table: unknown required region"},
		{"region unknown optional", regions(func(r []byte) {
			le.PutUint32(r[8:], 3)
			copy(r[16+64:], []byte{1, 2, 3})
			le.PutUint64(r[16+64+16:], 40*MiB) // past EOF, but still checked
			le.PutUint32(r[16+64+24:], MiB)
		}), "vhdx: region table: " + "00030201-0000-0000-0000-000000000000 region at 0x2800000 length 0x100000 lies past end of file"},
		{"region overlap", regions(func(r []byte) { copy(r[16+32+16:], r[16+16:16+24]) }), "vhdx: region table: BAT region overlaps metadata"},
		{"region overlaps log", regions(func(r []byte) { le.PutUint64(r[16+16:], MiB) }), "vhdx: region table: log region overlaps BAT"},
		{"region unaligned", regions(func(r []byte) { le.PutUint64(r[16+16:], 2*MiB+4096) }), "vhdx: region table: BAT region at 0x201000 length 0x100000 is not 1 MiB aligned"},
		{"region past EOF", regions(func(r []byte) { le.PutUint64(r[16+16:], 1<<40) }), "vhdx: region table: BAT region at 0x10000000000 length 0x100000 lies past end of file"},
		{"region in header section", regions(func(r []byte) { le.PutUint64(r[16+16:], 0) }), "vhdx: region table: BAT region at 0x0"},
		{"bat past EOF", func(b []byte) { le.PutUint64(b[bat+8*firstPresent:], 1<<40|PayloadFullyPresent) }, "vhdx: bat: entry " + strconv.Itoa(firstPresent) + " points past end of file"},
		{"bat max offset", func(b []byte) { le.PutUint64(b[bat+8*firstPresent:], ^uint64(0)&^7|PayloadFullyPresent) }, "vhdx: bat: entry " + strconv.Itoa(firstPresent) + " points past end of file"},
		{"bat into header", func(b []byte) { le.PutUint64(b[bat+8*firstPresent:], PayloadFullyPresent) }, "vhdx: bat: entry " + strconv.Itoa(firstPresent) + " points into the header section"},
		{"bat onto metadata", func(b []byte) { le.PutUint64(b[bat+8*firstPresent:], uint64(meta)|PayloadFullyPresent) }, "vhdx: bat: entry " + strconv.Itoa(firstPresent) + " overlaps the metadata region"},
		{"bat reserved state", func(b []byte) { le.PutUint64(b[bat+8*firstPresent:], 4) }, "vhdx: bat: entry " + strconv.Itoa(firstPresent) + " has reserved state 4"},
		{"bat partial without parent", func(b []byte) { b[bat+8*firstPresent] |= 7 }, "vhdx: bat: entry " + strconv.Itoa(firstPresent) + " is partially present in a disk without parent"},
		{"bat unmapped v0.95", func(b []byte) { le.PutUint64(b[bat+8*firstPresent:], PayloadUnmappedV095) }, ""},
		{"log misplaced", func(b []byte) {
			for _, h := range []int{Header1Offset, Header2Offset} {
				le.PutUint64(b[h+72:], MiB+4096)
				rdtFixCRC(b, h, HeaderSize)
			}
		}, "vhdx: header: log at 0x101000 length 0x100000 is not 1 MiB aligned"},
		{"log huge", func(b []byte) {
			for _, h := range []int{Header1Offset, Header2Offset} {
				le.PutUint32(b[h+68:], 0xfff00000)
				b[h+48] = 1
				rdtFixCRC(b, h, HeaderSize)
			}
		}, "vhdx: header: log at 0x100000 length 0xfff00000 lies past end of file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := rdtExercise(t, rdtPatched(t, file, c.edit))
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), c.want) || !errors.Is(err, vdisk.ErrCorrupt) {
				t.Fatalf("err = %v\nwant prefix %q wrapping ErrCorrupt", err, c.want)
			}
		})
	}
}

// TestReaderParentLocatorTable checks the parent locator parser's bounds.
func TestReaderParentLocatorTable(t *testing.T) {
	good := rdtLocator(map[string]string{"parent_linkage": "{x}", "relative_path": `.\p.vhdx`})
	if m, err := parseParentLocator(good); err != nil || m["relative_path"] != `.\p.vhdx` || m["parent_linkage"] != "{x}" {
		t.Fatalf("%v %v", m, err)
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name string
		edit func(b []byte) []byte
		want string
	}{
		{"short", func(b []byte) []byte { return b[:19] }, "vhdx: metadata: parent locator is 19 bytes"},
		{"type", func(b []byte) []byte { b[0] ^= 1; return b }, "vhdx: metadata: parent locator type"},
		{"count", func(b []byte) []byte { le.PutUint16(b[18:], 0xffff); return b }, "vhdx: metadata: parent locator has 65535 entries"},
		{"key outside", func(b []byte) []byte { le.PutUint32(b[20:], 0xfffffff0); return b }, "vhdx: metadata: parent locator entry 0 key: outside the item"},
		{"value odd", func(b []byte) []byte { le.PutUint16(b[20+10:], 3); return b }, "vhdx: metadata: parent locator entry 0 value: odd length"},
		{"key offset 0", func(b []byte) []byte { le.PutUint32(b[20:], 0); return b }, "vhdx: metadata: parent locator entry 0 key: empty or at offset 0"},
		{"duplicate", func(b []byte) []byte { copy(b[32:44], b[20:32]); return b }, "vhdx: metadata: parent locator has key \"parent_linkage\" twice"},
		{"no linkage", func(b []byte) []byte { le.PutUint16(b[18:], 0); return b }, "vhdx: metadata: parent locator lacks parent_linkage"},
	} {
		_, err := parseParentLocator(c.edit(bytes.Clone(good)))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) || !errors.Is(err, vdisk.ErrCorrupt) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
}
