// Package part reads the partition table of a whole virtual disk (GPT with
// its backup copy, MBR with extended/logical partitions, or none) from an
// io.ReaderAt, and numbers partitions the way Linux does, so that
// volumes/<disk>-p<N> in the recovery tree matches what an administrator
// sees in /dev/sdaN, sfdisk and mmls.
//
// The parser is hand-written rather than built on go-disk or go-diskfs:
// neither falls back to the backup GPT, go-disk assumes 512-byte sectors
// (4Kn disks are real on Hyper-V), go-diskfs wants an fs.File rather than a
// ReaderAt, and both need wrapping anyway to bound allocations and numbering
// on hostile input. The formats are small; owning the code keeps every limit
// visible and fuzzable.
//
// Policy: structural contradictions in a table (both GPT copies bad, an EBR
// chain loop) are errors, wrapping vdisk.ErrCorrupt. Problems of a single
// entry (extends past the end of the disk, empty range) and recoverable
// damage (primary GPT bad, backup good) become Table.Warnings, because a
// backup tool should still show the healthy partitions of a damaged disk.
package part

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Partition is one entry of the table. Start and Size are in bytes and lie
// within the disk (entries reaching past the end are clipped, see Read).
type Partition struct {
	// Index is the Linux partition number: the 1-based GPT entry index
	// (empty entries keep their numbers), MBR primaries 1–4 by slot,
	// logicals from 5 in chain order, 0 for a disk without a table.
	Index int
	Start int64
	Size  int64
	// Type is the GPT type GUID in text form, or the MBR type as "0x07";
	// empty for Index 0.
	Type string
	// TypeName is a human name ("Microsoft basic data", "FAT32 LBA"), or
	// for Index 0 the file system found at offset 0 ("NTFS", "ext2/3/4");
	// empty when unknown.
	TypeName string
	Name     string     // GPT partition name; empty for MBR
	GUID     vdisk.GUID // GPT unique partition GUID; zero for MBR
	// Bootable is the MBR active flag (0x80) or GPT attribute bit 2
	// (legacy BIOS bootable).
	Bootable bool
}

// Section returns a reader over the partition's bytes.
func (p Partition) Section(r io.ReaderAt) *io.SectionReader {
	return io.NewSectionReader(r, p.Start, p.Size)
}

// IsContainer reports whether p is an MBR extended partition, which holds
// the logical partitions rather than a file system. It is listed (as
// sfdisk, mmls and Linux do) so that numbering and the table are complete,
// but there is nothing to mount in it.
func (p Partition) IsContainer() bool {
	switch p.Type {
	case "0x05", "0x0f", "0x85":
		return true
	}
	return false
}

// Table is a parsed partition table.
type Table struct {
	Scheme     string     // "gpt", "mbr" or "none"
	DiskGUID   vdisk.GUID // GPT disk GUID; zero otherwise
	SectorSize int        // the logical sector size the table was read with
	// Partitions are in table order (GPT entry order; MBR primaries, then
	// logicals in chain order). Scheme "none" has one Index-0 partition
	// covering the whole disk.
	Partitions []Partition
	// Warnings describe recoverable damage: backup GPT used, entries
	// clipped or dropped, unexpected sector size.
	Warnings []string
}

// corruptError is a named, comparable error that also wraps
// vdisk.ErrCorrupt, so callers can test errors.Is(err, part.ErrGPTHeaderChecksum)
// for the specific cause or errors.Is(err, vdisk.ErrCorrupt) for "bad bytes,
// not an I/O failure".
type corruptError struct{ msg string }

func (e *corruptError) Error() string { return e.msg }
func (e *corruptError) Unwrap() error { return vdisk.ErrCorrupt }

func named(msg string) error { return &corruptError{msg} }

// Errors returned by Read (wrapped with details such as an LBA).
var (
	ErrDiskSize           = named("part: invalid disk size")
	ErrSectorSize         = named("part: unsupported sector size")
	ErrGPTNoSignature     = named("part: gpt: no header signature")
	ErrGPTHeaderSize      = named("part: gpt: invalid header size")
	ErrGPTHeaderChecksum  = named("part: gpt: header checksum mismatch")
	ErrGPTHeaderLBA       = named("part: gpt: header location mismatch")
	ErrGPTEntryArray      = named("part: gpt: invalid entry array geometry")
	ErrGPTEntriesChecksum = named("part: gpt: entries checksum mismatch")
	ErrMBRChainLoop       = named("part: mbr: extended chain loop")
	ErrMBRTooManyLogicals = named("part: mbr: too many logical partitions")
)

// maxLogicals bounds the EBR chain (and so the number of EBR reads) on
// hostile input; Linux has no fixed limit but nobody creates more.
const maxLogicals = 128

// Read parses the partition table of a disk of diskSize bytes. sectorSize
// is the disk's logical sector size (512 or 4096 from the VHDX metadata);
// 0 means unknown. A GPT is looked for with that size first and then with
// the other common one (a warning says so if the other one matched), since
// an image converted from a 4Kn disk may claim 512.
//
// Partitions reaching past the end of the disk are clipped, and those
// starting beyond it dropped, each with a warning, instead of failing the
// whole table: a disk image that was shrunk or truncated still has healthy
// partitions worth restoring, and the file system layer reports its own
// damage for the clipped one.
func Read(r io.ReaderAt, diskSize int64, sectorSize int) (*Table, error) {
	switch sectorSize {
	case 0, 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("%w: %d", ErrSectorSize, sectorSize)
	}
	if diskSize < 512 {
		return nil, fmt.Errorf("%w: %d bytes", ErrDiskSize, diskSize)
	}
	mbrSector := sectorSize
	if mbrSector == 0 {
		mbrSector = 512
	}

	// The first 4 KiB hold LBA 0 at any sector size and the ext superblock.
	head := make([]byte, min(diskSize, 4096))
	if err := readFull(r, head, 0); err != nil {
		return nil, err
	}
	var mbr []byte
	if len(head) >= 512 && head[510] == 0x55 && head[511] == 0xAA {
		mbr = head[:512]
	}

	if mbr != nil && hasProtective(mbr) {
		// The disk claims GPT: failing to read it is an error, never a
		// silent fallback to "whole disk", which would hide the damage.
		t, _, err := readGPTAny(r, diskSize, sectorSize)
		return t, err
	}
	fs := fsAtZero(head, false)
	if mbr != nil && mbrPlausible(mbr, diskSize, mbrSector, fs != "") {
		t, err := readMBR(r, diskSize, mbrSector, mbr)
		if err == nil && fs != "" {
			// GRUB and others copy an old BPB into their MBR; valid
			// entries outweigh a stale OEM string.
			t.Warnings = append(t.Warnings, "sector 0 also carries a "+fs+" boot-sector signature; the valid MBR entries win")
		}
		return t, err
	}
	if fs != "" {
		return wholeDisk(diskSize, mbrSector, fs), nil
	}
	if fs := fsAtZero(head, true); fs != "" {
		t := wholeDisk(diskSize, mbrSector, fs)
		if mbr != nil {
			t.Warnings = append(t.Warnings, "sector 0 ends in 55 AA but holds no usable MBR entries; treating the disk as a whole-disk "+fs)
		}
		return t, nil
	}
	// A GPT without its protective MBR (LBA 0 zeroed or overwritten):
	// Linux ignores it unless forced, but for recovery it is better to
	// show it, loudly.
	gt, sawSig, err := readGPTAny(r, diskSize, sectorSize)
	if err == nil {
		gt.Warnings = append([]string{"protective MBR missing; GPT used anyway"}, gt.Warnings...)
		return gt, nil
	}
	if !errors.Is(err, vdisk.ErrCorrupt) {
		return nil, err
	}
	t := wholeDisk(diskSize, mbrSector, "")
	if sawSig {
		t.Warnings = append(t.Warnings, "GPT header without protective MBR, unusable: "+err.Error())
	}
	switch {
	case mbr == nil:
		t.Warnings = append(t.Warnings, "no partition table or file system signature found; treating the disk as unpartitioned")
	case mbrInvalid(mbr) == "":
		// A valid MBR without usable entries: an initialised disk without
		// partitions, or one whose entries all lie beyond the disk
		// (readMBR says so in warnings).
		mt, err := readMBR(r, diskSize, mbrSector, mbr)
		if err != nil {
			return nil, err
		}
		mt.Warnings = append(t.Warnings, mt.Warnings...)
		return mt, nil
	default:
		t.Warnings = append(t.Warnings, "sector 0 ends in 55 AA but is not a valid MBR ("+mbrInvalid(mbr)+"); treating the disk as unpartitioned")
	}
	return t, nil
}

func wholeDisk(diskSize int64, sectorSize int, fs string) *Table {
	return &Table{
		Scheme:     "none",
		SectorSize: sectorSize,
		Partitions: []Partition{{Index: 0, Start: 0, Size: diskSize, TypeName: fs}},
	}
}

// fsAtZero recognises a file system that starts at byte 0 of the disk. The
// FAT/NTFS/exFAT boot sectors end in 55 AA like an MBR, so they are checked
// before the MBR (withExt=false); the ext superblock sits at 1024, where an
// MBR disk may keep boot-loader code, so it is only trusted once no valid
// MBR was found (withExt=true).
func fsAtZero(b []byte, withExt bool) string {
	if len(b) >= 512 {
		// A jump instruction at 0 guards the OEM-string checks against an
		// MBR whose boot code happens to contain the bytes.
		jump := b[0] == 0xEB || b[0] == 0xE9
		switch {
		case jump && bytes.Equal(b[3:11], []byte("NTFS    ")):
			return "NTFS"
		case jump && bytes.Equal(b[3:11], []byte("EXFAT   ")):
			return "exFAT"
		case jump && bytes.Equal(b[82:90], []byte("FAT32   ")):
			return "FAT32"
		case jump && bytes.Equal(b[54:58], []byte("FAT1")):
			return "FAT12/16"
		}
	}
	if withExt && len(b) >= 1024+0x3A && binary.LittleEndian.Uint16(b[1024+0x38:]) == 0xEF53 {
		return "ext2/3/4"
	}
	return ""
}

// readFull reads len(b) bytes at off, accepting io.EOF together with a full
// read as ReaderAt allows.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("part: read %d bytes at offset %d: %w", len(b), off, err)
}

// clip turns a sector range into a byte range inside the disk, or reports
// why it cannot. first and count are untrusted 64-bit values; the checks
// avoid overflow.
func clip(diskSize int64, ss int, first, count uint64, label string, warn *[]string) (start, size int64, ok bool) {
	sectors := uint64(diskSize) / uint64(ss)
	if count == 0 {
		*warn = append(*warn, fmt.Sprintf("%s: empty range; skipped", label))
		return 0, 0, false
	}
	if first >= sectors {
		*warn = append(*warn, fmt.Sprintf("%s: starts at LBA %d, beyond the end of the disk (%d sectors); dropped", label, first, sectors))
		return 0, 0, false
	}
	start = int64(first) * int64(ss)
	if count > sectors-first || int64(count)*int64(ss) > diskSize-start {
		size = diskSize - start
		*warn = append(*warn, fmt.Sprintf("%s: LBA %d+%d extends past the end of the disk; clipped to %d bytes", label, first, count, size))
		return start, size, true
	}
	return start, int64(count) * int64(ss), true
}
