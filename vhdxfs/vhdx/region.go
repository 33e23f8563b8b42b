package vhdx

import (
	"encoding/binary"
	"sort"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// RegionEntry is one entry of the region table (MS-VHDX 2.2.3.2).
type RegionEntry struct {
	GUID       vdisk.GUID
	FileOffset uint64
	Length     uint32
	Required   bool
}

// parseRegionTable decodes and checks one 64 KiB region table copy.
func parseRegionTable(buf []byte) ([]RegionEntry, error) {
	if len(buf) < RegionTableSize {
		return nil, rdCorrupt("region table: short read")
	}
	le := binary.LittleEndian
	if string(buf[:4]) != SigRegion {
		return nil, rdCorrupt("region table: bad signature")
	}
	if le.Uint32(buf[4:]) != Checksum(buf[:RegionTableSize], 4) {
		return nil, rdCorrupt("region table: checksum mismatch")
	}
	n := le.Uint32(buf[8:])
	if n > MaxRegionEntries {
		return nil, rdCorrupt("region table: %d entries (max %d)", n, MaxRegionEntries)
	}
	out := make([]RegionEntry, 0, n)
	for i := range int(n) {
		e := buf[16+32*i:]
		out = append(out, RegionEntry{
			GUID:       vdisk.GUIDFromMixed(e[:16]),
			FileOffset: le.Uint64(e[16:]),
			Length:     le.Uint32(e[24:]),
			Required:   le.Uint32(e[28:])&1 != 0,
		})
	}
	return out, nil
}

// rdSpan is a byte range of the VHDX file that some structure occupies.
type rdSpan struct {
	off, end uint64
	what     string
}

// pickRegions validates the entries of a region table and returns the BAT
// and metadata regions. Every region must be 1 MiB aligned, lie after the
// header section and inside the file, and overlap neither another region nor
// the log; an unknown region flagged Required makes the file unreadable.
func pickRegions(entries []RegionEntry, fileSize int64, log rdSpan) (bat, meta RegionEntry, err error) {
	var haveBAT, haveMeta bool
	spans := []rdSpan{}
	if log.end > log.off {
		spans = append(spans, log)
	}
	for _, e := range entries {
		name := e.GUID.String()
		switch e.GUID {
		case RegionBAT:
			if haveBAT {
				return bat, meta, rdCorrupt("region table: duplicate BAT region")
			}
			bat, haveBAT, name = e, true, "BAT"
		case RegionMetadata:
			if haveMeta {
				return bat, meta, rdCorrupt("region table: duplicate metadata region")
			}
			meta, haveMeta, name = e, true, "metadata"
		default:
			if e.Required {
				return bat, meta, rdCorrupt("region table: unknown required region %s", e.GUID)
			}
		}
		if e.FileOffset%MiB != 0 || e.FileOffset < HeaderSectionSize || e.Length == 0 || e.Length%MiB != 0 {
			return bat, meta, rdCorrupt("region table: %s region at %#x length %#x is not 1 MiB aligned", name, e.FileOffset, e.Length)
		}
		if e.FileOffset > uint64(fileSize) || uint64(e.Length) > uint64(fileSize)-e.FileOffset {
			return bat, meta, rdCorrupt("region table: %s region at %#x length %#x lies past end of file (%d bytes)", name, e.FileOffset, e.Length, fileSize)
		}
		spans = append(spans, rdSpan{e.FileOffset, e.FileOffset + uint64(e.Length), name})
	}
	if !haveBAT || !haveMeta {
		return bat, meta, rdCorrupt("region table: missing BAT or metadata region")
	}
	if a, b, ok := rdOverlap(spans); ok {
		return bat, meta, rdCorrupt("region table: %s region overlaps %s", a.what, b.what)
	}
	return bat, meta, nil
}

// rdOverlap reports the first pair of overlapping spans.
func rdOverlap(spans []rdSpan) (a, b rdSpan, ok bool) {
	s := append([]rdSpan(nil), spans...)
	sort.Slice(s, func(i, j int) bool { return s[i].off < s[j].off })
	for i := 1; i < len(s); i++ {
		if s[i].off < s[i-1].end {
			return s[i-1], s[i], true
		}
	}
	return a, b, false
}
