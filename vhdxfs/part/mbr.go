package part

import (
	"encoding/binary"
	"fmt"
	"io"
)

// mbrEntry is one 16-byte slot of an MBR or EBR at 0x1BE. The CHS fields
// are ignored: every tool since the 1990s writes the LBA fields, and CHS
// cannot describe disks beyond 8 GiB anyway.
type mbrEntry struct {
	status, typ  byte
	start, count uint32
}

func mbrEntries(sector []byte) [4]mbrEntry {
	var es [4]mbrEntry
	for i := range es {
		b := sector[0x1BE+16*i:]
		es[i] = mbrEntry{
			status: b[0],
			typ:    b[4],
			start:  binary.LittleEndian.Uint32(b[8:]),
			count:  binary.LittleEndian.Uint32(b[12:]),
		}
	}
	return es
}

// empty: type 0 means "unused" and a zero count holds nothing; Linux skips
// both (it tests only the count, but a type-0 slot with a count is junk).
func (e mbrEntry) empty() bool { return e.typ == 0 || e.count == 0 }

func isExtended(typ byte) bool { return typ == 0x05 || typ == 0x0F || typ == 0x85 }

func hasProtective(mbr []byte) bool {
	for _, e := range mbrEntries(mbr) {
		if e.typ == 0xEE {
			return true
		}
	}
	return false
}

// mbrInvalid returns why sector 0 cannot be an MBR, or "". Like Linux, the
// boot indicator is the discriminator: a boot sector (VBR) has code or text
// there, an MBR only 0x00 or 0x80.
func mbrInvalid(mbr []byte) string {
	for i, e := range mbrEntries(mbr) {
		if e.status != 0x00 && e.status != 0x80 {
			return fmt.Sprintf("slot %d has boot indicator 0x%02x", i+1, e.status)
		}
	}
	return ""
}

// mbrPlausible tells a real MBR from a boot sector (VBR) whose tail happens
// to look like entries: valid boot indicators and at least one used slot
// starting after sector 0 inside the disk. With strict (sector 0 also
// carries a FAT/NTFS signature) every used slot must lie wholly inside the
// disk, since then only a genuinely consistent table should win over the
// file system; otherwise a single broken entry must not hide the others,
// which readMBR clips or drops with a warning.
func mbrPlausible(mbr []byte, diskSize int64, ss int, strict bool) bool {
	if mbrInvalid(mbr) != "" {
		return false
	}
	sectors := uint64(diskSize) / uint64(ss)
	good := 0
	for _, e := range mbrEntries(mbr) {
		if e.empty() {
			continue
		}
		inside := e.start != 0 && uint64(e.start) < sectors
		if strict && (!inside || uint64(e.start)+uint64(e.count) > sectors) {
			return false
		}
		if inside {
			good++
		}
	}
	return good > 0
}

func mbrType(typ byte) string { return fmt.Sprintf("0x%02x", typ) }

// readMBR lists the primaries (numbered by slot) and then walks every
// extended partition's EBR chain, numbering logicals from 5 in chain order.
func readMBR(r io.ReaderAt, diskSize int64, ss int, mbr []byte) (*Table, error) {
	t := &Table{Scheme: "mbr", SectorSize: ss}
	es := mbrEntries(mbr)
	for i, e := range es {
		if e.empty() {
			continue
		}
		label := fmt.Sprintf("p%d", i+1)
		start, size, ok := clip(diskSize, ss, uint64(e.start), uint64(e.count), label, &t.Warnings)
		if !ok {
			continue
		}
		t.Partitions = append(t.Partitions, Partition{
			Index:    i + 1,
			Start:    start,
			Size:     size,
			Type:     mbrType(e.typ),
			TypeName: mbrTypeNames[e.typ],
			Bootable: e.status == 0x80,
		})
	}
	c := chain{r: r, diskSize: diskSize, ss: ss, t: t, next: 5, visited: map[uint64]bool{}}
	for _, e := range es {
		if e.empty() || !isExtended(e.typ) {
			continue
		}
		if err := c.walk(uint64(e.start)); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// chain walks EBR chains. The visited set is shared by all extended
// partitions so that two chains linking into each other are caught too.
type chain struct {
	r        io.ReaderAt
	diskSize int64
	ss       int
	t        *Table
	next     int // next logical partition number
	visited  map[uint64]bool
}

// walk follows one chain starting at the extended partition's first sector.
// EBR rules: a data entry's start is relative to the EBR holding it; the
// link entry's start is relative to the start of the extended partition.
func (c *chain) walk(extStart uint64) error {
	sectors := uint64(c.diskSize) / uint64(c.ss)
	sector := make([]byte, 512) // the table sits in the first 512 bytes of any sector size
	for cur := extStart; ; {
		if c.visited[cur] {
			return fmt.Errorf("%w at LBA %d", ErrMBRChainLoop, cur)
		}
		c.visited[cur] = true
		// Bound the number of EBR reads too, not only the logicals: a
		// chain of empty EBRs would otherwise run the length of the disk.
		if len(c.visited) > maxLogicals {
			return fmt.Errorf("%w: more than %d EBRs (at LBA %d)", ErrMBRTooManyLogicals, maxLogicals, cur)
		}
		if cur >= sectors {
			c.t.Warnings = append(c.t.Warnings, fmt.Sprintf("EBR at LBA %d is beyond the end of the disk; logical partitions from p%d on are missing", cur, c.next))
			return nil
		}
		if err := readFull(c.r, sector, int64(cur)*int64(c.ss)); err != nil {
			return err
		}
		if sector[510] != 0x55 || sector[511] != 0xAA {
			// Linux ends the chain silently here; we say so.
			c.t.Warnings = append(c.t.Warnings, fmt.Sprintf("EBR at LBA %d has no 55 AA signature; chain ends", cur))
			return nil
		}
		var link *mbrEntry
		es := mbrEntries(sector)
		for i := range es {
			e := es[i]
			if e.empty() {
				continue
			}
			if isExtended(e.typ) {
				if link == nil {
					link = &es[i]
				}
				continue
			}
			// Linux also takes data entries from slots 3 and 4 (OS/2
			// used them); so do we, for identical numbering.
			if c.next-5 >= maxLogicals {
				return fmt.Errorf("%w: more than %d (at EBR LBA %d)", ErrMBRTooManyLogicals, maxLogicals, cur)
			}
			label := fmt.Sprintf("p%d", c.next)
			c.next++ // numbers are used even by dropped entries, as in Linux
			start, size, ok := clip(c.diskSize, c.ss, cur+uint64(e.start), uint64(e.count), label, &c.t.Warnings)
			if !ok {
				continue
			}
			c.t.Partitions = append(c.t.Partitions, Partition{
				Index:    c.next - 1,
				Start:    start,
				Size:     size,
				Type:     mbrType(e.typ),
				TypeName: mbrTypeNames[e.typ],
				Bootable: e.status == 0x80,
			})
		}
		if link == nil {
			return nil
		}
		cur = extStart + uint64(link.start)
	}
}

// mbrTypeNames follows the fdisk/sfdisk names for the types seen on
// Windows and Linux guests.
var mbrTypeNames = map[byte]string{
	0x01: "FAT12",
	0x04: "FAT16 <32M",
	0x05: "Extended",
	0x06: "FAT16",
	0x07: "NTFS/exFAT",
	0x0b: "FAT32",
	0x0c: "FAT32 LBA",
	0x0e: "FAT16 LBA",
	0x0f: "Extended LBA",
	0x11: "Hidden FAT12",
	0x12: "Compaq diagnostics",
	0x14: "Hidden FAT16 <32M",
	0x16: "Hidden FAT16",
	0x17: "Hidden NTFS/exFAT",
	0x1b: "Hidden FAT32",
	0x1c: "Hidden FAT32 LBA",
	0x1e: "Hidden FAT16 LBA",
	0x27: "Hidden NTFS WinRE",
	0x42: "Windows dynamic (LDM)",
	0x82: "Linux swap",
	0x83: "Linux",
	0x85: "Linux extended",
	0x8e: "Linux LVM",
	0xa5: "FreeBSD",
	0xa6: "OpenBSD",
	0xa9: "NetBSD",
	0xaf: "HFS/HFS+",
	0xee: "GPT",
	0xef: "EFI (FAT-12/16/32)",
	0xfd: "Linux raid autodetect",
}
