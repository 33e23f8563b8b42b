// Package vhdx reads VHDX files (dynamic, fixed and differencing chains, with
// in-memory log replay) and synthesizes valid dynamic VHDX bytes from a
// logical disk image. Offset math lives in pure functions here so it can be
// tested by tables, far from I/O.
package vhdx

import (
	"hash/crc32"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Sizes of the fixed parts of the layout (MS-VHDX 2.1).
const (
	MiB               = 1 << 20
	HeaderSectionSize = 1 * MiB
	HeaderSize        = 4096
	RegionTableSize   = 64 * 1024
	Header1Offset     = 0x10000
	Header2Offset     = 0x20000
	RegionTable1Off   = 0x30000
	RegionTable2Off   = 0x40000
	MaxVirtualSize    = 64 << 40 // 64 TiB, the format's limit
	MinBlockSize      = 1 * MiB
	MaxBlockSize      = 256 * MiB
	MaxMetadataItem   = 1 * MiB
	MaxRegionEntries  = 2047
	MaxMetadataItems  = 2047
)

// Signatures.
const (
	SigFile     = "vhdxfile"
	SigHeader   = "head"
	SigRegion   = "regi"
	SigMetadata = "metadata"
	SigLogEntry = "loge"
	SigLogZero  = "zero"
	SigLogDesc  = "desc"
	SigLogData  = "data"
)

// Payload block states (BAT entry bits 0-2).
const (
	PayloadNotPresent       = 0
	PayloadUndefined        = 1
	PayloadZero             = 2
	PayloadUnmapped         = 3
	PayloadUnmappedV095     = 5
	PayloadFullyPresent     = 6
	PayloadPartiallyPresent = 7
	SBNotPresent            = 0
	SBPresent               = 6
)

func mustGUID(s string) vdisk.GUID {
	g, err := vdisk.ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// Well-known GUIDs (canonical order; store with .Mixed()).
var (
	RegionBAT          = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	RegionMetadata     = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
	MetaFileParameters = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	MetaVirtualSize    = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	MetaDiskID         = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	MetaLogicalSector  = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	MetaPhysicalSector = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	MetaParentLocator  = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	LocatorTypeVHDX    = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum computes the VHDX CRC-32C of buf with the 4-byte checksum field at
// csumOff treated as zero (buf is not modified).
func Checksum(buf []byte, csumOff int) uint32 {
	c := crc32.Update(0, castagnoli, buf[:csumOff])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(c, castagnoli, buf[csumOff+4:])
}

// ChunkRatio is the number of payload blocks covered by one sector-bitmap
// block: 2^23 * logicalSectorSize / blockSize.
func ChunkRatio(blockSize, logicalSectorSize uint32) int64 {
	return (int64(1) << 23) * int64(logicalSectorSize) / int64(blockSize)
}

// PayloadBlocks is ceil(virtualSize / blockSize).
func PayloadBlocks(virtualSize int64, blockSize uint32) int64 {
	return (virtualSize + int64(blockSize) - 1) / int64(blockSize)
}

// BATEntries is the number of BAT entries: nb + floor((nb-1)/cr) for
// dynamic and fixed disks, ceil(nb/cr)*(cr+1) for differencing disks.
func BATEntries(virtualSize int64, blockSize, logicalSectorSize uint32, hasParent bool) int64 {
	nb := PayloadBlocks(virtualSize, blockSize)
	cr := ChunkRatio(blockSize, logicalSectorSize)
	if hasParent {
		return (nb + cr - 1) / cr * (cr + 1)
	}
	if nb == 0 {
		return 0
	}
	return nb + (nb-1)/cr
}

// BATIndex is the BAT index of payload block b (interleaved with SB entries).
func BATIndex(b, chunkRatio int64) int64 { return b + b/chunkRatio }

// SBIndex is the BAT index of the sector-bitmap entry for chunk c.
func SBIndex(c, chunkRatio int64) int64 { return c*(chunkRatio+1) + chunkRatio }

// RoundUp rounds n up to a multiple of m (m > 0).
func RoundUp(n, m int64) int64 { return (n + m - 1) / m * m }
