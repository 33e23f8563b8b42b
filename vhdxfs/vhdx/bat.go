package vhdx

import (
	"encoding/binary"
	"sort"
)

// BAT entry layout (MS-VHDX 2.5.1): bits 0-2 state, bits 20-63 offset in MiB.
const rdBATOffsetMask = ^uint64(0xFFFFF)

func batState(e uint64) uint8  { return uint8(e & 7) }
func batOffset(e uint64) int64 { return int64(e & rdBATOffsetMask) }

// BATCounts counts payload entries by state (index = state value) and
// sector-bitmap entries by presence.
type BATCounts struct {
	Entries   int64    // total BAT entries read (payload + sector bitmap)
	Payload   [8]int64 // payload entries by state
	SBPresent int64
	SBAbsent  int64
}

// rdGeometry is the block layout derived from the metadata.
type rdGeometry struct {
	vsize     int64
	bs        int64
	lss       int64
	cr        int64
	nb        int64 // payload blocks
	entries   int64 // BAT entries
	hasParent bool
}

func newGeometry(md *Metadata) rdGeometry {
	g := rdGeometry{
		vsize:     md.VirtualSize,
		bs:        int64(md.BlockSize),
		lss:       int64(md.LogicalSectorSize),
		cr:        ChunkRatio(md.BlockSize, md.LogicalSectorSize),
		nb:        PayloadBlocks(md.VirtualSize, md.BlockSize),
		entries:   BATEntries(md.VirtualSize, md.BlockSize, md.LogicalSectorSize, md.HasParent),
		hasParent: md.HasParent,
	}
	return g
}

// blockLen is the number of virtual-disk bytes in payload block b (the last
// block is clipped to the virtual size).
func (g rdGeometry) blockLen(b int64) int64 {
	return min(g.bs, g.vsize-b*g.bs)
}

// loadBAT reads the BAT entries through rd (which applies the log overlay)
// in bounded pieces, so that the only large allocation is the []uint64
// itself, whose size follows from the validated virtual size and region.
func loadBAT(rd *rdMetaReader, region RegionEntry, g rdGeometry) ([]uint64, error) {
	if g.entries*8 > int64(region.Length) {
		return nil, rdCorrupt("bat: region of %d bytes is too small for %d entries", region.Length, g.entries)
	}
	bat := make([]uint64, g.entries)
	buf := make([]byte, min(g.entries*8, MiB))
	for i := int64(0); i < g.entries; {
		n := min(int64(len(buf))/8, g.entries-i)
		if err := rd.read(buf[:n*8], int64(region.FileOffset)+i*8); err != nil {
			return nil, rdWrap("bat: read", err)
		}
		for j := range n {
			bat[i+j] = binary.LittleEndian.Uint64(buf[j*8:])
		}
		i += n
	}
	return bat, nil
}

// checkBAT validates every entry (states, offsets inside the file and clear
// of the header section, log and every region) and counts them. used must
// not overlap itself (pickRegions checked that). Payload blocks are not
// checked against each other: aliasing blocks are harmless to a reader and
// the check would cost a sort of up to 64 Mi offsets.
func checkBAT(bat []uint64, g rdGeometry, fileSize int64, used []rdSpan) (BATCounts, error) {
	c := BATCounts{Entries: int64(len(bat))}
	used = append([]rdSpan(nil), used...)
	sort.Slice(used, func(i, j int) bool { return used[i].off < used[j].off })
	checkPlace := func(idx int64, e uint64, n int64) error {
		off := e & rdBATOffsetMask // unsigned: the top bit must not turn it negative
		if off < HeaderSectionSize {
			return rdCorrupt("bat: entry %d points into the header section", idx)
		}
		if off > uint64(fileSize) || uint64(n) > uint64(fileSize)-off {
			return rdCorrupt("bat: entry %d points past end of file", idx)
		}
		// used is sorted and non-overlapping: binary search keeps this
		// O(log n) even with thousands of (optional) regions.
		i := sort.Search(len(used), func(i int) bool { return used[i].end > off })
		if i < len(used) && used[i].off < off+uint64(n) {
			return rdCorrupt("bat: entry %d overlaps the %s region", idx, used[i].what)
		}
		return nil
	}
	// Sector-bitmap entries first: a partially present block needs its
	// chunk's bitmap block.
	chunks := (g.nb + g.cr - 1) / g.cr
	sbOK := make(map[int64]bool)
	for ch := range chunks {
		idx := SBIndex(ch, g.cr)
		if idx >= int64(len(bat)) {
			break // a dynamic BAT has no SB entry after the last chunk
		}
		e := bat[idx]
		if batState(e) != SBPresent || !g.hasParent {
			// Dynamic and fixed files must have no bitmaps; qemu ignores them too.
			c.SBAbsent++
			continue
		}
		if err := checkPlace(idx, e, MiB); err != nil {
			return c, err
		}
		c.SBPresent++
		sbOK[ch] = true
	}
	for b := range g.nb {
		idx := BATIndex(b, g.cr)
		e := bat[idx]
		st := batState(e)
		c.Payload[st]++
		switch st {
		case PayloadNotPresent, PayloadUndefined, PayloadZero, PayloadUnmapped, PayloadUnmappedV095:
		case PayloadFullyPresent:
			if err := checkPlace(idx, e, g.blockLen(b)); err != nil {
				return c, err
			}
		case PayloadPartiallyPresent:
			if !g.hasParent {
				return c, rdCorrupt("bat: entry %d is partially present in a disk without parent", idx)
			}
			if !sbOK[b/g.cr] {
				return c, rdCorrupt("bat: entry %d is partially present but its sector bitmap is not", idx)
			}
			if err := checkPlace(idx, e, g.blockLen(b)); err != nil {
				return c, err
			}
		default:
			return c, rdCorrupt("bat: entry %d has reserved state %d", idx, st)
		}
	}
	return c, nil
}
