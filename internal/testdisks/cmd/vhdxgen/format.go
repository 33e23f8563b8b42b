package main

// VHDX format facts (MS-VHDX; see /work/shared/VHDX-NOTES.md), duplicated
// from vhdxfs/vhdx on purpose: see the package comment.

import (
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"strings"
)

const (
	MiB             = 1 << 20
	HeaderSize      = 4096
	RegionTableSize = 64 * 1024
	Header1Offset   = 0x10000
	Header2Offset   = 0x20000
	RegionTable1Off = 0x30000
	RegionTable2Off = 0x40000

	SigFile     = "vhdxfile"
	SigHeader   = "head"
	SigRegion   = "regi"
	SigMetadata = "metadata"
	SigLogEntry = "loge"

	PayloadNotPresent       = 0
	PayloadZero             = 2
	PayloadFullyPresent     = 6
	PayloadPartiallyPresent = 7
	SBPresent               = 6
)

// guid is in RFC 4122 (canonical) byte order; on disk it is mixed-endian.
type guid [16]byte

func guidFromMixed(b []byte) guid {
	var g guid
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:16])
	return g
}

func (g guid) Mixed() [16]byte {
	var b [16]byte
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	copy(b[8:], g[8:16])
	return b
}

func (g guid) IsZero() bool { return g == guid{} }

func (g guid) String() string {
	h := hex.EncodeToString(g[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func parseGUID(s string) (guid, error) {
	var g guid
	t := strings.ReplaceAll(strings.Trim(strings.TrimSpace(s), "{}"), "-", "")
	if len(t) != 32 {
		return g, fmt.Errorf("bad GUID %q", s)
	}
	_, err := hex.Decode(g[:], []byte(t))
	return g, err
}

func mustGUID(s string) guid {
	g, err := parseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

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

// Checksum is the CRC-32C of buf with the 4-byte field at csumOff as zero.
func Checksum(buf []byte, csumOff int) uint32 {
	c := crc32.Update(0, castagnoli, buf[:csumOff])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(c, castagnoli, buf[csumOff+4:])
}

// ChunkRatio = 2^23 * logical sector size / block size.
func ChunkRatio(blockSize, lss uint32) int64 { return (int64(1) << 23) * int64(lss) / int64(blockSize) }

// PayloadBlocks = ceil(virtualSize / blockSize).
func PayloadBlocks(vs int64, bs uint32) int64 { return (vs + int64(bs) - 1) / int64(bs) }

// BATEntries: nb + (nb-1)/cr (dynamic, fixed) or ceil(nb/cr)*(cr+1) (differencing).
func BATEntries(vs int64, bs, lss uint32, hasParent bool) int64 {
	nb, cr := PayloadBlocks(vs, bs), ChunkRatio(bs, lss)
	if hasParent {
		return (nb + cr - 1) / cr * (cr + 1)
	}
	if nb == 0 {
		return 0
	}
	return nb + (nb-1)/cr
}

func BATIndex(b, cr int64) int64 { return b + b/cr }
func SBIndex(c, cr int64) int64  { return c*(cr+1) + cr }
func RoundUp(n, m int64) int64   { return (n + m - 1) / m * m }
