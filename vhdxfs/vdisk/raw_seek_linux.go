//go:build linux

package vdisk

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// dataExtents walks the file with SEEK_DATA/SEEK_HOLE. It runs once at open,
// before the RawDisk is shared, so moving the file offset is harmless: reads
// use pread and never depend on it. File systems without hole support answer
// EINVAL/EOPNOTSUPP (or report the whole file as data), and then the whole
// file is one extent.
func dataExtents(f *os.File, size int64) ([]Extent, error) {
	var ext []Extent
	for off := int64(0); off < size; {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // no data at or after off: the rest is a hole
			}
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				return wholeFile(size), nil
			}
			return nil, err
		}
		if data >= size {
			break
		}
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				hole = size // file shrank under us; the size at open wins
			} else {
				return nil, err
			}
		}
		if hole <= data {
			// A file system that gets this wrong must not send us into an
			// endless loop; count the rest as data.
			ext = append(ext, Extent{Off: data, Len: size - data})
			break
		}
		if hole > size {
			hole = size
		}
		ext = append(ext, Extent{Off: data, Len: hole - data})
		off = hole
	}
	return ext, nil
}
