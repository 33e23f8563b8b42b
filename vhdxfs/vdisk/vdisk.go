// Package vdisk holds the types every virtual-disk reader and writer in
// vhdxfs shares: GUIDs, extents of a virtual disk, a disk's identity facts and
// the Disk interface itself. It imports nothing of ours so that vhdxfs/vhdx,
// the raw reader and the rest of the project can all speak the same words.
package vdisk

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// GUID is a 16-byte identifier in RFC 4122 (canonical, big-endian) byte order,
// so that String gives the familiar text form. On-disk VHDX and GPT GUIDs are
// mixed-endian; convert them with GUIDFromMixed / GUID.Mixed.
type GUID [16]byte

// GUIDFromMixed converts the Microsoft mixed-endian on-disk form.
func GUIDFromMixed(b []byte) GUID {
	var g GUID
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:16])
	return g
}

// Mixed returns the Microsoft mixed-endian on-disk form.
func (g GUID) Mixed() [16]byte {
	var b [16]byte
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	copy(b[8:], g[8:16])
	return b
}

// IsZero reports whether every byte is zero.
func (g GUID) IsZero() bool { return g == GUID{} }

// String gives the lower-case 8-4-4-4-12 form.
func (g GUID) String() string {
	h := hex.EncodeToString(g[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// ParseGUID accepts the 8-4-4-4-12 form, with or without braces, any case.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	t := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "{"), "}")
	t = strings.ReplaceAll(t, "-", "")
	if len(t) != 32 {
		return g, fmt.Errorf("vdisk: bad GUID %q", s)
	}
	if _, err := hex.Decode(g[:], []byte(t)); err != nil {
		return g, fmt.Errorf("vdisk: bad GUID %q: %w", s, err)
	}
	return g, nil
}

// MarshalText lets GUIDs appear as strings in JSON manifests.
func (g GUID) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText parses the text form.
func (g *GUID) UnmarshalText(b []byte) error {
	v, err := ParseGUID(string(b))
	if err != nil {
		return err
	}
	*g = v
	return nil
}

// Extent is a byte range [Off, Off+Len) of a virtual disk.
type Extent struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// End is the first byte after the extent.
func (e Extent) End() int64 { return e.Off + e.Len }

// Identity holds the facts that identify a virtual disk and that a
// synthesized or restored copy must preserve.
type Identity struct {
	Format             string `json:"format"`                 // "vhdx" or "raw"
	DiskID             GUID   `json:"disk_id"`                // VHDX page-83 Virtual Disk ID
	DataWriteGUID      GUID   `json:"data_write_guid"`        // changes whenever data changes
	VirtualSize        int64  `json:"virtual_size"`           // guest-visible bytes
	LogicalSectorSize  uint32 `json:"logical_sector_size"`    // 512 or 4096
	PhysicalSectorSize uint32 `json:"physical_sector_size"`   // 512 or 4096
	BlockSize          uint32 `json:"block_size"`             // VHDX payload block size; 0 for raw
	Fixed              bool   `json:"fixed,omitempty"`        // VHDX LeaveBlocksAllocated
	ParentPath         string `json:"parent_path,omitempty"`  // differencing: resolved parent file
	ChainLength        int    `json:"chain_length,omitempty"` // 1 for a disk without parent
}

// Disk is a read-only virtual disk: its guest-visible bytes through ReadAt
// (reads past Size return io.EOF like a file), the ranges that may hold data
// (everything outside them reads as zeros and need never be read), and its
// identity. Implementations are safe for concurrent ReadAt.
type Disk interface {
	io.ReaderAt
	io.Closer
	Size() int64
	Identity() Identity
	// Allocated returns sorted, non-overlapping, non-adjacent extents that may
	// hold non-zero data. Ranges outside them are guaranteed to read as zeros.
	Allocated() []Extent
}

// ErrCorrupt marks structurally invalid input; errors wrap it so callers
// can tell bad images from I/O failures.
var ErrCorrupt = errors.New("corrupt image")

// NormalizeExtents sorts, clips to [0,size), drops empty and merges
// overlapping or adjacent extents.
func NormalizeExtents(ext []Extent, size int64) []Extent {
	out := make([]Extent, 0, len(ext))
	for _, e := range ext {
		if e.Off < 0 {
			e.Len += e.Off
			e.Off = 0
		}
		if e.End() > size {
			e.Len = size - e.Off
		}
		if e.Len > 0 {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Off < out[j].Off })
	merged := out[:0]
	for _, e := range out {
		if n := len(merged); n > 0 && e.Off <= merged[n-1].End() {
			if e.End() > merged[n-1].End() {
				merged[n-1].Len = e.End() - merged[n-1].Off
			}
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// AllocatedBytes sums the lengths of ext.
func AllocatedBytes(ext []Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Len
	}
	return n
}
