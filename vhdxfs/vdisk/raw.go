package vdisk

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// RawDisk is a flat image file read as a virtual disk: byte n of the file is
// byte n of the guest disk. It implements Disk.
//
// The size is fixed when the file is opened: a raw image that is being
// written to while we back it up must not make reads or the extent map
// disagree about where the disk ends.
type RawDisk struct {
	f    *os.File
	path string
	size int64
	ext  []Extent // computed once at open; Allocated hands out copies
}

var _ Disk = (*RawDisk)(nil)

// OpenRaw opens a flat (raw) disk image read-only. The allocated ranges are
// taken from SEEK_DATA/SEEK_HOLE where the platform and file system support
// them, so holes in a sparse image are neither read nor stored; elsewhere the
// whole file counts as allocated, which is always correct, only slower.
//
// Only regular files are accepted: block devices would need their size from
// an ioctl and are not a source vmvault backs up today.
func OpenRaw(path string) (*RawDisk, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vdisk: raw: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vdisk: raw: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("vdisk: raw: %s: not a regular file (mode %v)", path, fi.Mode())
	}
	size := fi.Size()
	ext, err := dataExtents(f, size)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vdisk: raw: %s: map allocated ranges: %w", path, err)
	}
	return &RawDisk{f: f, path: path, size: size, ext: NormalizeExtents(ext, size)}, nil
}

// ReadAt reads guest bytes. It is safe for concurrent use because
// os.File.ReadAt is a positioned read (pread) that never touches the shared
// file offset. Reads are cut at the size seen at open, with io.EOF.
func (d *RawDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vdisk: raw: %s: negative offset %d", d.path, off)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	short := false
	if rem := d.size - off; int64(len(p)) > rem {
		p = p[:rem]
		short = true
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil {
		if errors.Is(err, io.EOF) {
			// The file shrank after open: the guest disk cannot, so this
			// is a failure of the source, not the end of the disk.
			return n, fmt.Errorf("vdisk: raw: %s: file shorter than %d bytes seen at open: %w",
				d.path, d.size, io.ErrUnexpectedEOF)
		}
		return n, fmt.Errorf("vdisk: raw: %s: %w", d.path, err)
	}
	if short {
		return n, io.EOF
	}
	return n, nil
}

// Close closes the file.
func (d *RawDisk) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("vdisk: raw: %s: %w", d.path, err)
	}
	return nil
}

// Size is the file size at open.
func (d *RawDisk) Size() int64 { return d.size }

// Identity describes a raw image: it carries no sector size or disk ID of its
// own, so the conventional 512 bytes are reported and DiskID stays zero for
// the engine to assign (deriving one from the path or content would change
// when the file is moved or written).
func (d *RawDisk) Identity() Identity {
	return Identity{
		Format:             "raw",
		VirtualSize:        d.size,
		LogicalSectorSize:  512,
		PhysicalSectorSize: 512,
		ChainLength:        1,
	}
}

// Allocated returns a copy of the extents found at open, so callers may keep
// or modify it without synchronisation.
func (d *RawDisk) Allocated() []Extent {
	return append([]Extent(nil), d.ext...)
}

// wholeFile is the fallback extent map: everything may hold data.
func wholeFile(size int64) []Extent {
	if size <= 0 {
		return nil
	}
	return []Extent{{Off: 0, Len: size}}
}

// FileDataExtents returns the byte ranges of f's first size bytes that hold
// host data, found with SEEK_DATA/SEEK_HOLE where the platform and file
// system support them (elsewhere the whole file is one extent). Bytes
// outside the result are holes and read as zeros. It walks the file once and
// restores f's file offset afterwards, so positioned reads (ReadAt) are never
// affected; it must not run concurrently with Read/Seek users of f.
func FileDataExtents(f *os.File, size int64) ([]Extent, error) {
	if size <= 0 {
		return nil, nil
	}
	cur, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return wholeFile(size), nil // not seekable: assume data everywhere
	}
	ext, err := dataExtents(f, size)
	if _, serr := f.Seek(cur, io.SeekStart); err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	return NormalizeExtents(ext, size), nil
}
