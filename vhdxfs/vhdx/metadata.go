package vhdx

import (
	"encoding/binary"
	"unicode/utf16"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// MetadataItem is one metadata table entry (MS-VHDX 2.6.1.2).
type MetadataItem struct {
	ID            vdisk.GUID
	Offset        uint32
	Length        uint32
	IsUser        bool
	IsVirtualDisk bool
	IsRequired    bool
}

// Metadata holds the parsed system metadata items.
type Metadata struct {
	BlockSize            uint32
	LeaveBlocksAllocated bool
	HasParent            bool
	VirtualSize          int64
	DiskID               vdisk.GUID
	LogicalSectorSize    uint32
	PhysicalSectorSize   uint32
	// ParentLocator holds the key/value pairs of a differencing disk's
	// parent locator (parent_linkage, relative_path, ...); nil otherwise.
	ParentLocator map[string]string `json:",omitempty"`
	Items         []MetadataItem
}

const rdMetaTableSize = 64 * 1024 // the table occupies the first 64 KiB of the region

// parseMetadataTable decodes the metadata table (the first 64 KiB of the
// metadata region) and checks every entry against the region length.
func parseMetadataTable(buf []byte, regionLen uint32) ([]MetadataItem, error) {
	if len(buf) < rdMetaTableSize {
		return nil, rdCorrupt("metadata: short table")
	}
	le := binary.LittleEndian
	if string(buf[:8]) != SigMetadata {
		return nil, rdCorrupt("metadata: bad signature")
	}
	n := int(le.Uint16(buf[10:]))
	if n > MaxMetadataItems {
		return nil, rdCorrupt("metadata: %d entries (max %d)", n, MaxMetadataItems)
	}
	items := make([]MetadataItem, 0, n)
	seen := make(map[vdisk.GUID]bool, n)
	for i := range n {
		e := buf[32+32*i:]
		flags := le.Uint32(e[24:])
		it := MetadataItem{
			ID:            vdisk.GUIDFromMixed(e[:16]),
			Offset:        le.Uint32(e[16:]),
			Length:        le.Uint32(e[20:]),
			IsUser:        flags&1 != 0,
			IsVirtualDisk: flags&2 != 0,
			IsRequired:    flags&4 != 0,
		}
		if seen[it.ID] {
			return nil, rdCorrupt("metadata: duplicate item %s", it.ID)
		}
		seen[it.ID] = true
		if it.Length > MaxMetadataItem {
			return nil, rdCorrupt("metadata: item %s is %d bytes (max %d)", it.ID, it.Length, MaxMetadataItem)
		}
		// Offset=Length=0 means present but empty; otherwise the item must
		// lie after the table and inside the region.
		if it.Length != 0 || it.Offset != 0 {
			if it.Offset < rdMetaTableSize || uint64(it.Offset)+uint64(it.Length) > uint64(regionLen) {
				return nil, rdCorrupt("metadata: item %s at %#x length %d lies outside the region", it.ID, it.Offset, it.Length)
			}
		}
		items = append(items, it)
	}
	return items, nil
}

// rdKnownItem reports whether id is a system item this reader understands.
func rdKnownItem(id vdisk.GUID) bool {
	switch id {
	case MetaFileParameters, MetaVirtualSize, MetaDiskID, MetaLogicalSector, MetaPhysicalSector, MetaParentLocator:
		return true
	}
	return false
}

// decodeMetadata interprets the items; item(id) returns the item bytes.
func decodeMetadata(items []MetadataItem, item func(MetadataItem) ([]byte, error)) (*Metadata, error) {
	md := &Metadata{Items: items}
	byID := make(map[vdisk.GUID]MetadataItem, len(items))
	for _, it := range items {
		if !rdKnownItem(it.ID) && it.IsRequired {
			return nil, rdCorrupt("metadata: unknown required item %s", it.ID)
		}
		byID[it.ID] = it
	}
	get := func(id vdisk.GUID, name string, minLen int) ([]byte, error) {
		it, ok := byID[id]
		if !ok {
			return nil, rdCorrupt("metadata: missing %s item", name)
		}
		b, err := item(it)
		if err != nil {
			return nil, err
		}
		if len(b) < minLen {
			return nil, rdCorrupt("metadata: %s item is %d bytes, want %d", name, len(b), minLen)
		}
		return b, nil
	}
	le := binary.LittleEndian
	b, err := get(MetaFileParameters, "file parameters", 8)
	if err != nil {
		return nil, err
	}
	md.BlockSize = le.Uint32(b)
	flags := le.Uint32(b[4:])
	md.LeaveBlocksAllocated, md.HasParent = flags&1 != 0, flags&2 != 0
	if !validBlockSize(md.BlockSize) {
		return nil, rdCorrupt("metadata: block size %d is not a power of 2 between 1 MiB and 256 MiB", md.BlockSize)
	}
	if b, err = get(MetaLogicalSector, "logical sector size", 4); err != nil {
		return nil, err
	}
	md.LogicalSectorSize = le.Uint32(b)
	if b, err = get(MetaPhysicalSector, "physical sector size", 4); err != nil {
		return nil, err
	}
	md.PhysicalSectorSize = le.Uint32(b)
	if !validSectorSize(md.LogicalSectorSize) || !validSectorSize(md.PhysicalSectorSize) {
		return nil, rdCorrupt("metadata: sector sizes %d/%d, want 512 or 4096", md.LogicalSectorSize, md.PhysicalSectorSize)
	}
	if b, err = get(MetaVirtualSize, "virtual disk size", 8); err != nil {
		return nil, err
	}
	vs := le.Uint64(b)
	if vs > MaxVirtualSize || vs%uint64(md.LogicalSectorSize) != 0 {
		return nil, rdCorrupt("metadata: virtual size %d exceeds 64 TiB or is not a multiple of the %d-byte sector", vs, md.LogicalSectorSize)
	}
	md.VirtualSize = int64(vs)
	if b, err = get(MetaDiskID, "virtual disk ID", 16); err != nil {
		return nil, err
	}
	md.DiskID = vdisk.GUIDFromMixed(b)
	if md.HasParent {
		if b, err = get(MetaParentLocator, "parent locator", 20); err != nil {
			return nil, err
		}
		if md.ParentLocator, err = parseParentLocator(b); err != nil {
			return nil, err
		}
	}
	return md, nil
}

func validBlockSize(bs uint32) bool {
	return bs >= MinBlockSize && bs <= MaxBlockSize && bs&(bs-1) == 0
}

func validSectorSize(s uint32) bool { return s == 512 || s == 4096 }

// parseParentLocator decodes the parent locator item (MS-VHDX 2.6.2.6):
// a 20-byte header, then 12-byte key/value entries pointing at UTF-16LE
// strings inside the item.
func parseParentLocator(b []byte) (map[string]string, error) {
	le := binary.LittleEndian
	if len(b) < 20 {
		return nil, rdCorrupt("metadata: parent locator is %d bytes", len(b))
	}
	if vdisk.GUIDFromMixed(b[:16]) != LocatorTypeVHDX {
		return nil, rdCorrupt("metadata: parent locator type %s is not VHDX", vdisk.GUIDFromMixed(b[:16]))
	}
	n := int(le.Uint16(b[18:]))
	if 20+12*n > len(b) {
		return nil, rdCorrupt("metadata: parent locator has %d entries in %d bytes", n, len(b))
	}
	out := make(map[string]string, n)
	for i := range n {
		e := b[20+12*i:]
		k, err := rdUTF16At(b, le.Uint32(e[0:]), le.Uint16(e[8:]))
		if err != nil {
			return nil, rdCorrupt("metadata: parent locator entry %d key: %v", i, err)
		}
		v, err := rdUTF16At(b, le.Uint32(e[4:]), le.Uint16(e[10:]))
		if err != nil {
			return nil, rdCorrupt("metadata: parent locator entry %d value: %v", i, err)
		}
		if _, dup := out[k]; dup {
			return nil, rdCorrupt("metadata: parent locator has key %q twice", k)
		}
		out[k] = v
	}
	if out["parent_linkage"] == "" {
		return nil, rdCorrupt("metadata: parent locator lacks parent_linkage")
	}
	return out, nil
}

// rdUTF16At decodes the UTF-16LE string of n bytes at off inside b.
func rdUTF16At(b []byte, off uint32, n uint16) (string, error) {
	switch {
	case off == 0 || n == 0:
		return "", rdMsg("empty or at offset 0")
	case n%2 != 0:
		return "", rdMsg("odd length")
	case uint64(off)+uint64(n) > uint64(len(b)):
		return "", rdMsg("outside the item")
	}
	u := make([]uint16, n/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[int(off)+2*i:])
	}
	return string(utf16.Decode(u)), nil
}

// rdMsg is a constant-message error used inside wrapped messages.
type rdMsg string

func (e rdMsg) Error() string { return string(e) }
