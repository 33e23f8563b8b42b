package guest

import (
	"errors"
	"io"
	"io/fs"
	"path"
)

// IOFS adapts f to io/fs so that fs.WalkDir, fs.ReadFile and friends work.
// Like FS, it does not follow symlinks: they show up with fs.ModeSymlink, and
// opening one fails.
func IOFS(f FS) fs.FS { return ioFS{f} }

type ioFS struct{ f FS }

var (
	_ fs.ReadDirFS  = ioFS{}
	_ fs.StatFS     = ioFS{}
	_ fs.ReadFileFS = ioFS{}
)

func (i ioFS) Stat(name string) (fs.FileInfo, error) {
	fi, err := i.f.Stat(name)
	if err != nil {
		return nil, err
	}
	return fi.Info(), nil
}

func (i ioFS) ReadDir(name string) ([]fs.DirEntry, error) {
	list, err := i.f.ReadDir(name)
	if err != nil {
		return nil, err
	}
	out := make([]fs.DirEntry, len(list))
	for j, fi := range list {
		out[j] = fs.FileInfoToDirEntry(fi.Info())
	}
	return out, nil
}

func (i ioFS) ReadFile(name string) ([]byte, error) {
	f, err := i.f.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Size comes from the image: read through a SectionReader instead of
	// allocating Size() bytes up front.
	return io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
}

func (i ioFS) Open(name string) (fs.File, error) {
	fi, err := i.f.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return &ioDir{fs: i.f, name: name, info: fi}, nil
	}
	f, err := i.f.Open(name)
	if err != nil {
		return nil, err
	}
	if name == "." {
		fi.Name = "."
	} else {
		fi.Name = path.Base(name)
	}
	return &ioFile{SectionReader: io.NewSectionReader(f, 0, f.Size()), f: f, info: fi}, nil
}

type ioFile struct {
	*io.SectionReader
	f    File
	info FileInfo
}

func (f *ioFile) Stat() (fs.FileInfo, error) { return f.info.Info(), nil }
func (f *ioFile) Close() error               { return f.f.Close() }

type ioDir struct {
	fs      FS
	name    string
	info    FileInfo
	entries []FileInfo
	read    bool
	pos     int
}

func (d *ioDir) Stat() (fs.FileInfo, error) { return d.info.Info(), nil }
func (d *ioDir) Close() error               { return nil }
func (d *ioDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: errors.New("guest: is a directory")}
}

func (d *ioDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if !d.read {
		l, err := d.fs.ReadDir(d.name)
		if err != nil {
			return nil, err
		}
		d.entries, d.read = l, true
	}
	rest := d.entries[d.pos:]
	if n > 0 && len(rest) == 0 {
		return nil, io.EOF
	}
	if n > 0 && n < len(rest) {
		rest = rest[:n]
	}
	d.pos += len(rest)
	out := make([]fs.DirEntry, len(rest))
	for i, fi := range rest {
		out[i] = fs.FileInfoToDirEntry(fi.Info())
	}
	return out, nil
}
