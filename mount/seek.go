package mount

import (
	"errors"
	"fmt"
	"sort"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// ErrNoData is returned by Handle.SeekData/SeekHole when there is no data (SEEK_DATA) or
// no hole (SEEK_HOLE) at or after the offset; adapters map it to ENXIO.
var ErrNoData = errors.New("mount: no data or hole at or after offset")

// SEEK_DATA / SEEK_HOLE over an allocation map: the .raw files and
// volume.img know which ranges hold data, so `cp --sparse`, `qemu-img
// convert` and friends skip the holes without reading them. Pure
// functions over sorted, merged extents; tested by tables.

// seekData returns the first offset >= off that may hold data.
func seekData(ext []vdisk.Extent, size, off int64) (int64, bool) {
	if off < 0 || off >= size {
		return 0, false
	}
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > off })
	if i == len(ext) || ext[i].Off >= size {
		return 0, false
	}
	return max(off, ext[i].Off), true
}

// seekHole returns the first offset >= off that is in a hole; the end of
// the file counts as one.
func seekHole(ext []vdisk.Extent, size, off int64) (int64, bool) {
	if off < 0 || off > size {
		return 0, false
	}
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > off })
	if i < len(ext) && ext[i].Off <= off {
		return min(ext[i].End(), size), true
	}
	return off, true
}

// clipExtents returns the parts of ext inside [start, start+size), shifted
// to start at 0 (a partition's view of the disk's allocation).
func clipExtents(ext []vdisk.Extent, start, size int64) []vdisk.Extent {
	out := []vdisk.Extent{} // known and empty, not nil (unknown)
	end := start + size
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > start })
	for ; i < len(ext) && ext[i].Off < end; i++ {
		a, b := max(ext[i].Off, start), min(ext[i].End(), end)
		out = append(out, vdisk.Extent{Off: a - start, Len: b - a})
	}
	return out
}

// SeekData implements lseek's SEEK_DATA: the first offset >= off that may
// hold data. Files without an allocation map are all data.
func (h *Handle) SeekData(off int64) (int64, error) { return h.seek(off, false) }

// SeekHole implements lseek's SEEK_HOLE: the first offset >= off in a hole
// (the end of the file is one).
func (h *Handle) SeekHole(off int64) (int64, error) { return h.seek(off, true) }

func (h *Handle) seek(off int64, hole bool) (int64, error) {
	ext := h.alloc
	if ext == nil {
		ext = []vdisk.Extent{{Off: 0, Len: h.size}}
	}
	var r int64
	var ok bool
	if hole {
		r, ok = seekHole(ext, h.size, off)
	} else {
		r, ok = seekData(ext, h.size, off)
	}
	if !ok {
		return 0, fmt.Errorf("mount: %s: seek from %d: %w", h.path, off, ErrNoData)
	}
	return r, nil
}

// allocOps is implemented by files that may know their allocation map;
// allocated returns nil when this one does not.
type allocOps interface {
	allocated() []vdisk.Extent
}

// AllocatedBytes is the number of bytes that may hold data (st_blocks),
// and whether the node knows it; other files count as fully allocated.
func (n *Node) AllocatedBytes() (int64, bool) {
	if a, ok := n.ops.(allocOps); ok {
		if ext := a.allocated(); ext != nil {
			return vdisk.AllocatedBytes(ext), true
		}
	}
	return n.info.Size, false
}
