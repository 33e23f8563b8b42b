// Package pagefile finds the disk ranges held by a Windows guest's paging,
// hibernation and swap files (pagefile.sys, hiberfil.sys, swapfile.sys in
// the root of an NTFS volume). Their contents are meaningless after a
// restore (Windows recreates them at boot) but change constantly, so an
// incremental backup that skips them stores far less.
package pagefile

import (
	"fmt"
	"io"

	"www.velocidex.com/golang/go-ntfs/parser"

	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Names are the files excluded, in the root of each NTFS volume.
var Names = []string{"pagefile.sys", "hiberfil.sys", "swapfile.sys"}

// Found is one excluded file.
type Found struct {
	Volume string // "p2"
	Name   string
	Bytes  int64
}

// Ranges returns the disk byte ranges (sorted, merged) of the data of the
// files in Names on every NTFS volume of d, whole clusters (the slack of
// the last one included: it belongs to the file). Only plain (non-sparse,
// uncompressed) runs are returned; a volume that cannot be parsed is
// skipped, since excluding nothing is always safe.
func Ranges(d vdisk.Disk) ([]vdisk.Extent, []Found, error) {
	vols, _, err := vhdxfs.Volumes(d)
	if err != nil {
		return nil, nil, nil // no partition table we read: nothing to exclude
	}
	var ext []vdisk.Extent
	var found []Found
	for _, v := range vols {
		if v.FSType != "ntfs" {
			continue
		}
		e, f := volumeRanges(v.Section(), v.Partition.Start, fmt.Sprintf("p%d", v.Partition.Index))
		ext = append(ext, e...)
		found = append(found, f...)
	}
	return vdisk.NormalizeExtents(ext, d.Size()), found, nil
}

// volumeRanges parses one NTFS volume. go-ntfs panics on some damaged
// structures; a panic means "nothing found here", not a failed backup.
func volumeRanges(vol io.ReaderAt, base int64, volName string) (ext []vdisk.Extent, found []Found) {
	defer func() {
		if recover() != nil {
			ext, found = nil, nil
		}
	}()
	ctx, err := parser.GetNTFSContext(vol, 0)
	if err != nil {
		return nil, nil
	}
	for _, name := range Names {
		rr, err := parser.GetDataForPath(ctx, name)
		if err != nil {
			continue
		}
		var n int64
		// go-ntfs nests readers: the runs that read the volume itself
		// (the delegate is our volume reader) are the file's clusters;
		// their offsets and lengths are in clusters.
		volType := fmt.Sprintf("%T", vol)
		for _, r := range parser.DebugRuns(rr, 0) {
			if r.Type != "MappedReader" || r.Reader != volType || r.IsSparse || r.CompressedLength != 0 ||
				r.ClusterSize <= 0 || r.Length <= 0 || r.ToOffset < 0 {
				continue
			}
			ext = append(ext, vdisk.Extent{Off: base + r.ToOffset*r.ClusterSize, Len: r.Length * r.ClusterSize})
			n += r.Length * r.ClusterSize
		}
		if n > 0 {
			found = append(found, Found{Volume: volName, Name: name, Bytes: n})
		}
	}
	return ext, found
}

// Subtract removes the ranges ex from the sorted extents alloc.
func Subtract(alloc, ex []vdisk.Extent) []vdisk.Extent {
	if len(ex) == 0 {
		return alloc
	}
	var out []vdisk.Extent
	j := 0
	for _, a := range alloc {
		off, end := a.Off, a.End()
		for j < len(ex) && ex[j].End() <= off {
			j++
		}
		for k := j; k < len(ex) && ex[k].Off < end; k++ {
			if ex[k].Off > off {
				out = append(out, vdisk.Extent{Off: off, Len: ex[k].Off - off})
			}
			off = max(off, ex[k].End())
		}
		if off < end {
			out = append(out, vdisk.Extent{Off: off, Len: end - off})
		}
	}
	return out
}

func (f Found) String() string { return fmt.Sprintf("%s/%s (%d bytes)", f.Volume, f.Name, f.Bytes) }
