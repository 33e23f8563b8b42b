package vhdx

import (
	"maps"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// ChainFile describes one file of an opened disk's differencing chain: the
// facts a restore needs to write the same chain again (each file's own
// identity and how it names its parent).
type ChainFile struct {
	// Path is the file as opened: the path given to Open for the top, the
	// resolved locator path for each parent.
	Path               string
	DiskID             vdisk.GUID // page-83 Virtual Disk ID of this file
	DataWriteGUID      vdisk.GUID // this file's DataWriteGuid
	VirtualSize        int64
	LogicalSectorSize  uint32
	PhysicalSectorSize uint32
	BlockSize          uint32
	// ParentLocator is a copy of the file's parent locator entries
	// (parent_linkage, relative_path, ...) as stored; nil for the base.
	ParentLocator map[string]string
}

// Chain lists the files the disk reads through, the top (the file opened)
// first and the base (the file without a parent) last. A disk without
// parent gives one entry.
func (d *Disk) Chain() []ChainFile {
	out := make([]ChainFile, len(d.layers))
	for i, l := range d.layers {
		md := l.info.Metadata
		out[i] = ChainFile{
			Path:               l.name,
			DiskID:             md.DiskID,
			DataWriteGUID:      l.dataGUID,
			VirtualSize:        md.VirtualSize,
			LogicalSectorSize:  md.LogicalSectorSize,
			PhysicalSectorSize: md.PhysicalSectorSize,
			BlockSize:          md.BlockSize,
		}
		if md.HasParent {
			// A copy: the caller may keep or change it while the layer
			// stays shared by concurrent readers.
			out[i].ParentLocator = maps.Clone(md.ParentLocator)
		}
	}
	return out
}
