package vhdxfs

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// PageFileNames are the root files of a Windows volume whose content is
// scratch: virtual memory (pagefile.sys), the hibernation image
// (hiberfil.sys) and the swap file of store apps (swapfile.sys). Windows
// recreates the page and swap files at boot and treats a hibernation file
// without its signature as "no image" (a cold boot), so restoring them as
// zeros of the same length is safe, while backing them up costs GiB of
// always-new data per VM.
var PageFileNames = []string{"pagefile.sys", "hiberfil.sys", "swapfile.sys"}

// PageFile is one page, hibernation or swap file found on a guest NTFS
// volume. The JSON form is meant for the recovery point, which records what
// was left out.
type PageFile struct {
	// Volume is the Partition.Index of the volume: the <N> of
	// "volumes/<disk>-p<N>" (0 for a disk without partition table).
	Volume int `json:"volume"`
	// Path is the name as stored in the volume root (NTFS is
	// case-insensitive, so "PAGEFILE.SYS" is found as well).
	Path string `json:"path"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
	// Extents are the disk-relative byte ranges of every cluster allocated
	// to the file's data, sorted, non-overlapping and non-adjacent
	// (vdisk.NormalizeExtents). Empty when the data is resident in the
	// MFT record (tiny files) or the file is empty.
	Extents []Extent `json:"extents"`
}

// PageFileRanges finds PageFileNames in the root of every NTFS volume of d,
// so the backup can leave their clusters out of the disk's allocation map.
//
// Nothing here may fail a backup: a volume whose table entry, filesystem or
// file cannot be read, or whose run list fails the guest package's checks
// (see guest.Extenter), contributes no ranges and one warning line instead,
// and the other volumes are still examined. Leaving clusters in only costs
// storage; leaving the wrong clusters out loses data, so every doubt
// resolves to "back it up". The error is non-nil only when the partition
// table itself cannot be read (the same error Volumes returns); then the
// caller should back up the whole allocation and report it.
//
// Partition-table warnings are not repeated here: Volumes reports them.
func PageFileRanges(d Disk) ([]PageFile, []string, error) {
	vols, _, err := Volumes(d)
	if err != nil {
		return nil, nil, err
	}
	var out []PageFile
	var warns []string
	for _, v := range vols {
		if v.FSType != "ntfs" {
			continue
		}
		pfs, w := volumePageFiles(v)
		out = append(out, pfs...)
		warns = append(warns, w...)
	}
	return out, warns, nil
}

// volumePageFiles looks up PageFileNames on one NTFS volume.
func volumePageFiles(v Volume) ([]PageFile, []string) {
	warn := func(format string, args ...any) string {
		return fmt.Sprintf("vhdxfs: p%d: page files: ", v.Partition.Index) + fmt.Sprintf(format, args...)
	}
	fsys, err := v.OpenFS()
	if err != nil {
		return nil, []string{warn("%v", err)}
	}
	defer fsys.Close()
	// A root that cannot be read fails every lookup: say so once.
	if _, err := fsys.Stat("."); err != nil {
		return nil, []string{warn("%v", err)}
	}
	ex, ok := fsys.(guest.Extenter)
	if !ok {
		return nil, []string{warn("%s volume cannot map files to clusters", fsys.Type())}
	}
	var out []PageFile
	var warns []string
	seen := map[uint64]bool{}
	for _, name := range PageFileNames {
		fi, err := fsys.Stat(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			warns = append(warns, warn("%v", err))
			continue
		}
		if !fi.Mode.IsRegular() {
			warns = append(warns, warn("%s is not a regular file (%v), kept", fi.Name, fi.Mode.Type()))
			continue
		}
		if seen[fi.Ino] {
			continue // a hard link to a file already listed: same clusters
		}
		seen[fi.Ino] = true
		ext, err := ex.FileExtents(name)
		if err != nil {
			warns = append(warns, warn("%s kept: %v", fi.Name, err))
			continue
		}
		disk := make([]Extent, len(ext))
		for i, e := range ext {
			disk[i] = Extent{Off: v.Partition.Start + e.Off, Len: e.Len}
		}
		// guest checked every range against the volume size, which is the
		// partition size; clipping to the partition is a second fence.
		disk = vdisk.NormalizeExtents(disk, v.Partition.Start+v.Partition.Size)
		out = append(out, PageFile{Volume: v.Partition.Index, Path: fi.Name, Size: fi.Size, Extents: disk})
	}
	return out, warns
}
