package part

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strings"
	"unicode/utf16"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// maxEntryArray bounds NumEntries*EntrySize so hostile headers cannot make
// us allocate more than 1 MiB per copy. Real tables use 16 KiB (128 x 128);
// the largest seen in the wild are well under 1 MiB.
const maxEntryArray = 1 << 20

type gptHeader struct {
	lba         uint64 // where this copy was read
	altLBA      uint64
	firstUsable uint64
	lastUsable  uint64
	diskGUID    vdisk.GUID
	entryLBA    uint64
	numEntries  uint32
	entrySize   uint32
	entriesCRC  uint32
}

// readGPTAny reads a GPT with the caller's sector size first and then with
// the other usual sizes. The first size whose primary or backup copy is
// intact wins. sawSig reports whether any "EFI PART" header was seen.
func readGPTAny(r io.ReaderAt, diskSize int64, hint int) (t *Table, sawSig bool, err error) {
	sizes := []int{512, 4096}
	if hint != 0 {
		sizes = []int{hint}
		for _, s := range []int{512, 4096} {
			if s != hint {
				sizes = append(sizes, s)
			}
		}
	}
	var best error
	bestSawSig := false
	for _, ss := range sizes {
		t, sawSig, err := readGPT(r, diskSize, ss)
		if err == nil {
			if hint != 0 && ss != hint {
				t.Warnings = append([]string{fmt.Sprintf("GPT found with %d-byte sectors, not the %d-byte logical sectors given", ss, hint)}, t.Warnings...)
			}
			return t, true, nil
		}
		if !errors.Is(err, vdisk.ErrCorrupt) {
			return nil, sawSig, err // I/O failure: do not guess further
		}
		// Report the attempt that found a header, it says what is broken.
		if best == nil || (sawSig && !bestSawSig) {
			best, bestSawSig = err, sawSig
		}
	}
	return nil, bestSawSig, best
}

// readGPT reads the primary GPT at LBA 1 and, if it is damaged, the backup
// at the last LBA (or where the primary header's AlternateLBA points, if
// the header itself survived). sawSig reports whether any "EFI PART" was
// seen, to choose the more telling error among sector sizes.
func readGPT(r io.ReaderAt, diskSize int64, ss int) (t *Table, sawSig bool, err error) {
	sectors := uint64(diskSize) / uint64(ss)
	if sectors < 3 {
		return nil, false, fmt.Errorf("%w: %d bytes is too small for a GPT with %d-byte sectors", ErrDiskSize, diskSize, ss)
	}
	h, ents, perr := readGPTCopy(r, diskSize, ss, 1)
	sawSig = !errors.Is(perr, ErrGPTNoSignature)
	if perr == nil {
		t := gptTable(h, ents, diskSize, ss)
		// Check the backup as well: it is what we would need after the
		// next corruption, so the operator should hear that it is gone.
		if h.altLBA != sectors-1 && h.altLBA > 1 && h.altLBA < sectors {
			// Typical after the virtual disk was expanded and the guest
			// has not yet moved its backup GPT to the new end.
			t.Warnings = append(t.Warnings, fmt.Sprintf("backup GPT at LBA %d, not at the last LBA %d (disk resized?)", h.altLBA, sectors-1))
		}
		if h.altLBA <= 1 || h.altLBA >= sectors {
			t.Warnings = append(t.Warnings, fmt.Sprintf("backup GPT location LBA %d is outside the disk (%d sectors)", h.altLBA, sectors))
		} else if _, _, berr := readGPTCopy(r, diskSize, ss, h.altLBA); berr != nil {
			if !errors.Is(berr, vdisk.ErrCorrupt) {
				return nil, true, berr
			}
			t.Warnings = append(t.Warnings, "backup GPT unusable: "+berr.Error())
		}
		return t, true, nil
	}
	if !errors.Is(perr, vdisk.ErrCorrupt) {
		return nil, sawSig, perr
	}

	cands := []uint64{sectors - 1}
	if h != nil && h.altLBA != sectors-1 && h.altLBA > 1 && h.altLBA < sectors {
		// The primary header was intact (only its entries were not):
		// trust its pointer to the backup, e.g. on a disk that grew.
		cands = append(cands, h.altLBA)
	}
	var berr error
	var blba uint64
	for _, lba := range cands {
		var bh *gptHeader
		var bents []byte
		bh, bents, berr = readGPTCopy(r, diskSize, ss, lba)
		blba = lba
		if !errors.Is(berr, ErrGPTNoSignature) {
			sawSig = true
		}
		if berr == nil {
			t := gptTable(bh, bents, diskSize, ss)
			t.Warnings = append([]string{fmt.Sprintf("primary GPT unusable (%v); using the backup at LBA %d", perr, lba)}, t.Warnings...)
			return t, true, nil
		}
		if !errors.Is(berr, vdisk.ErrCorrupt) {
			return nil, sawSig, berr
		}
	}
	return nil, sawSig, fmt.Errorf("%w; backup at LBA %d: %w", perr, blba, berr)
}

// readGPTCopy reads and verifies one header and its entry array. When the
// header is valid but the entries are not, the header is returned with the
// error so the caller can follow its AlternateLBA.
func readGPTCopy(r io.ReaderAt, diskSize int64, ss int, lba uint64) (*gptHeader, []byte, error) {
	sectors := uint64(diskSize) / uint64(ss)
	buf := make([]byte, ss)
	if err := readFull(r, buf, int64(lba)*int64(ss)); err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(buf[:8], []byte("EFI PART")) {
		return nil, nil, fmt.Errorf("%w at LBA %d", ErrGPTNoSignature, lba)
	}
	hs := binary.LittleEndian.Uint32(buf[12:])
	if hs < 92 || hs > uint32(ss) {
		return nil, nil, fmt.Errorf("%w at LBA %d: %d bytes", ErrGPTHeaderSize, lba, hs)
	}
	want := binary.LittleEndian.Uint32(buf[16:])
	clear(buf[16:20]) // the CRC is computed with its own field zeroed
	if got := crc32.ChecksumIEEE(buf[:hs]); got != want {
		return nil, nil, fmt.Errorf("%w at LBA %d: stored %08x, computed %08x", ErrGPTHeaderChecksum, lba, want, got)
	}
	le := binary.LittleEndian
	h := &gptHeader{
		lba:         lba,
		altLBA:      le.Uint64(buf[32:]),
		firstUsable: le.Uint64(buf[40:]),
		lastUsable:  le.Uint64(buf[48:]),
		diskGUID:    vdisk.GUIDFromMixed(buf[56:72]),
		entryLBA:    le.Uint64(buf[72:]),
		numEntries:  le.Uint32(buf[80:]),
		entrySize:   le.Uint32(buf[84:]),
		entriesCRC:  le.Uint32(buf[88:]),
	}
	// A header copied to the wrong place (or read with the wrong sector
	// size) must not be trusted, the CRC alone cannot tell.
	if my := le.Uint64(buf[24:]); my != lba {
		return nil, nil, fmt.Errorf("%w at LBA %d: header says MyLBA %d", ErrGPTHeaderLBA, lba, my)
	}
	// The spec allows 128*2^n; Linux accepts only 128. We accept the spec.
	es := h.entrySize
	if es < 128 || es&(es-1) != 0 {
		return h, nil, fmt.Errorf("%w at LBA %d: entry size %d", ErrGPTEntryArray, lba, es)
	}
	total := uint64(h.numEntries) * uint64(es)
	if total > maxEntryArray {
		return h, nil, fmt.Errorf("%w at LBA %d: %d entries of %d bytes exceed %d bytes", ErrGPTEntryArray, lba, h.numEntries, es, maxEntryArray)
	}
	arraySectors := (total + uint64(ss) - 1) / uint64(ss)
	if h.entryLBA == 0 || h.entryLBA >= sectors || arraySectors > sectors-h.entryLBA {
		return h, nil, fmt.Errorf("%w at LBA %d: entry array at LBA %d (%d sectors) outside the disk", ErrGPTEntryArray, lba, h.entryLBA, arraySectors)
	}
	if h.entryLBA <= lba && lba < h.entryLBA+arraySectors {
		return h, nil, fmt.Errorf("%w at LBA %d: entry array at LBA %d overlaps the header", ErrGPTEntryArray, lba, h.entryLBA)
	}
	ents := make([]byte, total)
	if err := readFull(r, ents, int64(h.entryLBA)*int64(ss)); err != nil {
		return h, nil, err
	}
	if got := crc32.ChecksumIEEE(ents); got != h.entriesCRC {
		return h, nil, fmt.Errorf("%w at LBA %d: entries at LBA %d stored %08x, computed %08x", ErrGPTEntriesChecksum, lba, h.entryLBA, h.entriesCRC, got)
	}
	return h, ents, nil
}

// gptTable turns a verified header and entry array into a Table. Entry
// problems become warnings; the table as a whole is sound (CRCs matched).
func gptTable(h *gptHeader, ents []byte, diskSize int64, ss int) *Table {
	t := &Table{Scheme: "gpt", DiskGUID: h.diskGUID, SectorSize: ss}
	sectors := uint64(diskSize) / uint64(ss)
	if h.lastUsable >= sectors {
		t.Warnings = append(t.Warnings, fmt.Sprintf("GPT describes a larger disk: last usable LBA %d, disk has %d sectors", h.lastUsable, sectors))
	}
	es := int(h.entrySize)
	le := binary.LittleEndian
	for i := 0; i < int(h.numEntries); i++ {
		e := ents[i*es : (i+1)*es]
		typ := vdisk.GUIDFromMixed(e[0:16])
		if typ.IsZero() {
			continue // unused entry; its number stays reserved
		}
		label := fmt.Sprintf("p%d", i+1)
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first {
			t.Warnings = append(t.Warnings, fmt.Sprintf("%s: last LBA %d before first LBA %d; skipped", label, last, first))
			continue
		}
		count := last - first
		if count < math.MaxUint64 {
			count++ // LastLBA is inclusive
		}
		if first < h.firstUsable || last > h.lastUsable {
			t.Warnings = append(t.Warnings, fmt.Sprintf("%s: LBA %d-%d outside the usable range %d-%d", label, first, last, h.firstUsable, h.lastUsable))
		}
		start, size, ok := clip(diskSize, ss, first, count, label, &t.Warnings)
		if !ok {
			continue
		}
		t.Partitions = append(t.Partitions, Partition{
			Index:    i + 1,
			Start:    start,
			Size:     size,
			Type:     typ.String(),
			TypeName: gptTypeNames[typ.String()],
			Name:     utf16Name(e[56:128]),
			GUID:     vdisk.GUIDFromMixed(e[16:32]),
			Bootable: le.Uint64(e[48:])&(1<<2) != 0,
		})
	}
	return t
}

// utf16Name decodes the NUL-terminated UTF-16LE name; unpaired surrogates
// become U+FFFD rather than failing the table.
func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// gptTypeNames maps lower-case type GUIDs to the names sgdisk prints (or
// close to them) for types found on Hyper-V guests.
var gptTypeNames = func() map[string]string {
	m := map[string]string{
		"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
		"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
		"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
		"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows RE",
		"5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Windows LDM metadata",
		"AF9B60A0-1431-4F62-BC68-3311714A69AD": "Windows LDM data",
		"E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D": "Windows Storage Spaces",
		"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
		"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
		"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
		"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
		"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
		"44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
		"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM64)",
		"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux /home",
		"3B8F8425-20E0-4F3B-907F-1A25A76F98E8": "Linux /srv",
		"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
		"CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS",
		"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
		"024DEE41-33E7-11D3-9D69-0008C781F39F": "MBR partition scheme",
		"48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS+",
		"7C3457EF-0000-11AA-AA11-00306543ECAC": "Apple APFS",
		"516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD disklabel",
		"83BD6B9D-7F41-11DC-BE0B-001560B84F0F": "FreeBSD boot",
		"516E7CBA-6ECF-11D6-8FF8-00022D09712B": "FreeBSD ZFS",
		"6A898CC3-1DD2-11B2-99A6-080020736631": "Solaris /usr & Apple ZFS",
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[strings.ToLower(k)] = v
	}
	return out
}()
