package vhdx

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf16"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// DiffParent says how an empty differencing VHDX names its parent: the
// parent locator (MS-VHDX 2.6.2.6) of the file NewDiff makes.
type DiffParent struct {
	// Linkage is the parent's DataWriteGuid (parent_linkage). Required:
	// readers refuse a parent whose DataWriteGuid differs.
	Linkage vdisk.GUID
	// RelativePath, AbsoluteWin32Path and VolumePath are stored as given
	// (Windows form, e.g. `.\base.vhdx`, `C:\VMs\base.vhdx`,
	// `\\?\Volume{...}\VMs\base.vhdx`); empty ones are left out. At least
	// one of RelativePath and AbsoluteWin32Path is needed to find the
	// parent anywhere but on the Windows volume it was made on.
	RelativePath      string
	AbsoluteWin32Path string
	VolumePath        string
}

// NewDiff prepares an EMPTY differencing VHDX: every BAT entry is
// NOT_PRESENT (payload and sector bitmap), so every read falls through to
// the parent, and a merge into the parent changes nothing. The identity
// gives the file's own page-83 DiskID, DataWriteGUID (its children link to
// it), virtual size, sector sizes and block size (0: 2 MiB, what Hyper-V
// uses for .avhdx files); zero GUIDs are derived as NewSynth does.
//
// The layout is NewSynth's (header section, empty log, BAT at 2 MiB, one
// 1 MiB metadata region), with a BAT sized for a differencing disk (it has
// a sector-bitmap entry after every chunk, the last one included) and the
// metadata items Hyper-V writes into an .avhdx: file parameters with
// HasParent, then the parent locator (keys in Hyper-V's order:
// parent_linkage, absolute_win32_path, relative_path, volume_path,
// parent_linkage2 = the zero GUID). The result reads and writes like any
// Synth (ReadAt, WriteFile); it has no payload blocks, so src is never read.
func NewDiff(id vdisk.Identity, parent DiffParent, opts SynthOptions) (*Synth, error) {
	if parent.Linkage.IsZero() {
		return nil, errors.New("vhdx: diff: zero parent linkage (the parent's DataWriteGuid)")
	}
	if parent.RelativePath == "" && parent.AbsoluteWin32Path == "" && parent.VolumePath == "" {
		return nil, errors.New("vhdx: diff: parent locator names no path")
	}
	for _, v := range []string{parent.RelativePath, parent.AbsoluteWin32Path, parent.VolumePath} {
		// Entry lengths are u16 byte counts; Windows paths end at 32767
		// UTF-16 units anyway.
		if n := len(utf16.Encode([]rune(v))); n > diffMaxPath {
			return nil, fmt.Errorf("vhdx: diff: parent path of %d UTF-16 units (max %d)", n, diffMaxPath)
		}
	}
	if id.BlockSize == 0 && opts.BlockSize == 0 {
		id.BlockSize = diffDefaultBlockSize
	}
	// NewSynth validates sizes, sector sizes, block size and creator, and
	// fills in the defaults and derived GUIDs; an empty allocation gives
	// the headers and region tables of a file without payload.
	base, err := NewSynth(id, diffNoData{}, nil, opts)
	if err != nil {
		return nil, fmt.Errorf("vhdx: diff: %w", err)
	}
	eff := base.Identity()
	eff.ChainLength = 0 // unknown here: depends on the parent
	lay := diffLayout(eff)
	creator := opts.Creator
	if creator == "" {
		creator = synthDefaultCreator
	}
	// The FileWriteGuid of a synthesized file is derived from what shapes
	// it; the linkage belongs to that here.
	fileWrite := synthDeriveGUID("diff-file-write:"+parent.Linkage.String(), eff, nil, creator)
	var static []synthSeg
	for _, sg := range synthStatic(lay, eff, fileWrite, utf16.Encode([]rune(creator))) {
		// Keep the identifier, headers and region tables; the metadata
		// region is written below with the differencing items.
		if sg.off < HeaderSectionSize {
			static = append(static, sg)
		}
	}
	static = append(static, diffMetadata(lay, eff, parent)...)
	// The Synth of the empty dynamic file, re-laid out: only the layout,
	// identity and static bytes differ (no runs, so no payload read).
	base.lay, base.id, base.static = lay, eff, static
	return base, nil
}

// WriteDiffFile writes the empty differencing VHDX of NewDiff to path
// atomically (temporary file, fsync, rename, directory fsync), like
// WriteFile.
func WriteDiffFile(ctx context.Context, path string, id vdisk.Identity, parent DiffParent, opts SynthOptions) error {
	s, err := NewDiff(id, parent, opts)
	if err != nil {
		return err
	}
	return s.WriteFile(ctx, path)
}

// diffDefaultBlockSize is Hyper-V's block size for checkpoint disks
// (.avhdx), as in the real sample: small blocks keep a child small once
// the guest writes to it.
const diffDefaultBlockSize = 2 * MiB

// diffMaxPath bounds each locator path (UTF-16 units): Windows' own limit,
// which also keeps the whole locator far inside its metadata region.
const diffMaxPath = 32767

// diffLayout is synthNewLayout's layout for a file without payload, with
// the BAT long enough for a differencing disk: its sector-bitmap entries
// follow every chunk, so it can need one entry more than a dynamic BAT,
// which may cross a 1 MiB boundary.
func diffLayout(id vdisk.Identity) synthLayout {
	l := synthNewLayout(id.VirtualSize, id.BlockSize, id.LogicalSectorSize, 0)
	l.batEntries = BATEntries(id.VirtualSize, id.BlockSize, id.LogicalSectorSize, true)
	l.batLength = RoundUp(l.batEntries*8, MiB)
	l.metaOffset = synthBATOffset + l.batLength
	l.payloadOffset = l.metaOffset + synthMetadataLength
	l.size = l.payloadOffset
	return l
}

// diffMetadata builds the metadata table and items of a differencing file:
// the five items of a dynamic file (file parameters with HasParent set)
// plus the parent locator, with the flags Hyper-V gives them.
func diffMetadata(l synthLayout, id vdisk.Identity, parent DiffParent) []synthSeg {
	le := binary.LittleEndian
	const (
		flagVirtualDisk = 0x2
		flagRequired    = 0x4
		fileHasParent   = 0x2 // file parameters flags bit 1
	)
	loc := diffLocator(parent)
	items := make([]byte, 0x28+len(loc))
	le.PutUint32(items[0x00:], uint32(l.blockSize))
	le.PutUint32(items[0x04:], fileHasParent)
	le.PutUint64(items[0x08:], uint64(id.VirtualSize))
	did := id.DiskID.Mixed()
	copy(items[0x10:], did[:])
	le.PutUint32(items[0x20:], id.LogicalSectorSize)
	le.PutUint32(items[0x24:], id.PhysicalSectorSize)
	copy(items[0x28:], loc)
	mt := metadataTable([]metaItem{
		{MetaFileParameters, 0x00, 8, flagRequired},
		{MetaVirtualSize, 0x08, 8, flagVirtualDisk | flagRequired},
		{MetaDiskID, 0x10, 16, flagVirtualDisk | flagRequired},
		{MetaLogicalSector, 0x20, 4, flagVirtualDisk | flagRequired},
		{MetaPhysicalSector, 0x24, 4, flagVirtualDisk | flagRequired},
		// Not IsVirtualDisk: the locator belongs to this file, not to
		// the virtual disk the chain presents (as Hyper-V marks it).
		{MetaParentLocator, 0x28, len(loc), flagRequired},
	})
	return []synthSeg{
		{l.metaOffset, mt},
		{l.metaOffset + synthMetaItemsOffset, items},
	}
}

// diffLocator encodes the parent locator item: the VHDX locator type, a
// reserved u16, the entry count, 12-byte entries (key offset, value offset,
// key length, value length; offsets from the item start), then the
// UTF-16LE strings, keys before their values, in entry order.
func diffLocator(p DiffParent) []byte {
	kv := [][2]string{{"parent_linkage", "{" + p.Linkage.String() + "}"}}
	for _, e := range [][2]string{
		{"absolute_win32_path", p.AbsoluteWin32Path},
		{"relative_path", p.RelativePath},
		{"volume_path", p.VolumePath},
	} {
		if e[1] != "" {
			kv = append(kv, e)
		}
	}
	// Hyper-V writes parent_linkage2 as the zero GUID; readers that
	// accept either linkage never match it.
	kv = append(kv, [2]string{"parent_linkage2", "{" + vdisk.GUID{}.String() + "}"})
	le := binary.LittleEndian
	hdr := 20 + 12*len(kv)
	b := make([]byte, hdr)
	lt := LocatorTypeVHDX.Mixed()
	copy(b, lt[:])
	le.PutUint16(b[18:], uint16(len(kv)))
	enc := func(s string) []byte {
		u := utf16.Encode([]rune(s))
		out := make([]byte, 2*len(u))
		for i, c := range u {
			le.PutUint16(out[2*i:], c)
		}
		return out
	}
	for i, p := range kv {
		k, v := enc(p[0]), enc(p[1])
		e := b[20+12*i:]
		le.PutUint32(e[0:], uint32(len(b)))
		le.PutUint32(e[4:], uint32(len(b)+len(k)))
		le.PutUint16(e[8:], uint16(len(k)))
		le.PutUint16(e[10:], uint16(len(v)))
		b = append(append(b, k...), v...)
	}
	return b
}

// diffNoData is the source of a file without payload blocks: never read.
type diffNoData struct{}

func (diffNoData) ReadAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("vhdx: diff: read of payload at %d: %w", off, io.ErrUnexpectedEOF)
}
