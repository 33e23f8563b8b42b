package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// The read-only API (used by restore and the mount). Nothing here takes a
// lock: manifests are immutable once committed, the catalog is read from
// files that are either absent or complete, and the chunkstore is safe for
// concurrent reads.

// Catalog is the read-only view of a repository's VMs and recovery point
// pointers. It needs neither the password nor the repository lock, so
// listing works while a backup runs.
type Catalog struct{ cat *catalog }

// OpenCatalog opens the catalog of the repository in dir.
func OpenCatalog(dir string) (*Catalog, error) {
	if _, err := os.Stat(filepath.Join(dir, "config")); err != nil {
		return nil, fmt.Errorf("engine: %s: %w (run vmvault init)", dir, ErrNoRepository)
	}
	return &Catalog{cat: &catalog{dir: dir}}, nil
}

// ListVMs lists the VMs of the catalog, sorted by name.
func (r *Catalog) ListVMs() ([]VM, error) {
	vms, err := r.cat.vms()
	if err != nil {
		return nil, fmt.Errorf("engine: list VMs: %w", err)
	}
	return vms, nil
}

// FindVM resolves a VM by name or GUID.
func (r *Catalog) FindVM(nameOrGUID string) (VM, error) {
	vm, err := r.cat.findVM(nameOrGUID)
	if err != nil {
		return VM{}, fmt.Errorf("engine: %w", err)
	}
	return vm, nil
}

// ListRecoveryPoints returns the committed recovery points of a VM (name
// or GUID), oldest first, from their pointer files: no manifest is read.
func (r *Catalog) ListRecoveryPoints(vm string) ([]*Pointer, error) {
	v, err := r.FindVM(vm)
	if err != nil {
		return nil, err
	}
	return listPointers(r.cat, v.GUID)
}

func listPointers(c *catalog, guid string) ([]*Pointer, error) {
	ids, err := c.rpIDs(guid)
	if err != nil {
		return nil, fmt.Errorf("engine: list recovery points: %w", err)
	}
	var out []*Pointer
	for _, id := range ids {
		p, err := c.pointer(guid, id)
		if err != nil {
			return nil, fmt.Errorf("engine: recovery point %s: %w", id, err)
		}
		p.ID = id
		out = append(out, p)
	}
	return out, nil
}

// ResolveRP returns the pointer of recovery point id ("latest" for the
// newest) of a VM given by name or GUID.
func (r *Catalog) ResolveRP(vm, id string) (*Pointer, error) {
	v, err := r.FindVM(vm)
	if err != nil {
		return nil, err
	}
	if id == "latest" || id == "" {
		ids, err := r.cat.rpIDs(v.GUID)
		if err != nil {
			return nil, fmt.Errorf("engine: %w", err)
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("engine: VM %s has no recovery point: %w", v.Name, ErrUnknownRP)
		}
		id = ids[len(ids)-1]
	}
	if _, _, ok := parseRPID(id); !ok {
		return nil, fmt.Errorf("engine: %q: %w (want YYYY-MM-DDTHHMMSSZ or latest)", id, ErrUnknownRP)
	}
	p, err := r.cat.pointer(v.GUID, id)
	if err != nil {
		return nil, fmt.Errorf("engine: VM %s: %w", v.Name, err)
	}
	p.ID = id
	return p, nil
}

// LoadManifest loads recovery point id ("latest" allowed) of a VM.
func (r *Repo) LoadManifest(ctx context.Context, vm, id string) (*Manifest, error) {
	p, err := r.ResolveRP(vm, id)
	if err != nil {
		return nil, err
	}
	return r.loadManifest(ctx, p)
}

func (r *Repo) loadManifest(ctx context.Context, p *Pointer) (*Manifest, error) {
	b, err := loadStream(ctx, r.store, p.Manifest, p.ManifestSize)
	if err != nil {
		return nil, fmt.Errorf("engine: recovery point %s: load manifest: %w", p.ID, err)
	}
	if sha256Hex(b) != p.ManifestSHA256 {
		return nil, fmt.Errorf("engine: recovery point %s: manifest checksum mismatch: %w", p.ID, ErrCorrupt)
	}
	m, err := decodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("engine: recovery point %s: %w", p.ID, err)
	}
	m.ID = p.ID
	return m, nil
}

// Disk returns the manifest entry of a disk by name.
func (m *Manifest) Disk(name string) (*DiskManifest, error) {
	for i := range m.Disks {
		if m.Disks[i].Name == name {
			return &m.Disks[i], nil
		}
	}
	return nil, fmt.Errorf("engine: recovery point %s: disk %q: %w", m.ID, name, ErrUnknownDisk)
}

// DiskReader reads a backed-up disk's guest bytes: an io.ReaderAt over the
// chunks with a sorted extent table (zeros between extents). It is
// immutable and safe for concurrent use.
type DiskReader struct {
	st    chunkGetter
	ext   []Extent
	id    vdisk.Identity
	alloc []vdisk.Extent
	ra    atomic.Pointer[readAhead] // set while a restore reads ahead (readahead.go)
}

var _ vdisk.Disk = (*DiskReader)(nil)

// OpenDisk returns a reader of disk name in the manifest m.
func (r *Repo) OpenDisk(m *Manifest, name string) (*DiskReader, error) {
	d, err := m.Disk(name)
	if err != nil {
		return nil, err
	}
	return newDiskReader(r.store, d), nil
}

func newDiskReader(st chunkGetter, d *DiskManifest) *DiskReader {
	ext := flatExtents(d)
	alloc := make([]vdisk.Extent, 0, len(ext))
	for _, e := range ext {
		alloc = append(alloc, vdisk.Extent{Off: e.Off, Len: e.Len})
	}
	return &DiskReader{st: st, ext: ext, id: d.Identity, alloc: vdisk.NormalizeExtents(alloc, d.Identity.VirtualSize)}
}

// Size is the virtual size.
func (d *DiskReader) Size() int64 { return d.id.VirtualSize }

// Identity returns the source disk's identity facts.
func (d *DiskReader) Identity() vdisk.Identity { return d.id }

// Allocated returns the ranges that hold stored data (a copy).
func (d *DiskReader) Allocated() []vdisk.Extent { return append([]vdisk.Extent(nil), d.alloc...) }

// Close does nothing; the Repo owns the store.
func (d *DiskReader) Close() error { return nil }

// ReadAt reads guest bytes like a file of Size bytes: io.EOF at or past
// the end, and with a short count when p crosses it.
func (d *DiskReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("engine: read at negative offset %d", off)
	}
	size := d.id.VirtualSize
	if off >= size {
		return 0, io.EOF
	}
	var eof error
	if rem := size - off; int64(len(p)) > rem {
		p, eof = p[:rem], io.EOF
	}
	n := len(p)
	if ra := d.ra.Load(); ra != nil {
		ra.note(off, int64(n))
	}
	ext := d.ext
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > off })
	for len(p) > 0 {
		if i >= len(ext) || ext[i].Off >= off+int64(len(p)) {
			clear(p)
			break
		}
		e := ext[i]
		if e.Off > off {
			z := e.Off - off
			clear(p[:z])
			p, off = p[z:], off+z
		}
		m := min(int64(len(p)), e.End()-off)
		got, err := d.st.GetRange(context.Background(), chunkstore.ID(e.ID), e.ChunkOff+(off-e.Off), p[:m])
		if err == nil && int64(got) != m {
			err = fmt.Errorf("chunk %s shorter than its extent: %w", e.ID, ErrCorrupt)
		}
		if err != nil {
			return n - len(p), fmt.Errorf("engine: read disk at %d: %w", off, err)
		}
		p, off = p[m:], off+m
		i++
	}
	return n, eof
}

// FileReader reads a backed-up configuration file (io.ReaderAt).
type FileReader struct {
	st     chunkGetter
	chunks []ChunkRef
	starts []int64 // stream offset of each chunk
	size   int64
}

// OpenConfigFile returns a reader of configuration file name (relative
// path as listed in the manifest).
func (r *Repo) OpenConfigFile(m *Manifest, name string) (*FileReader, error) {
	for _, cf := range m.Config {
		if cf.Name == name {
			return newFileReader(r.store, cf.Chunks), nil
		}
	}
	return nil, fmt.Errorf("engine: recovery point %s: config file %q: %w", m.ID, name, chunkstore.ErrNotFound)
}

func newFileReader(st chunkGetter, chunks []ChunkRef) *FileReader {
	f := &FileReader{st: st, chunks: chunks, starts: make([]int64, len(chunks))}
	for i, c := range chunks {
		f.starts[i] = f.size
		f.size += c.Len
	}
	return f
}

// Size is the file size.
func (f *FileReader) Size() int64 { return f.size }

// ReadAt reads like a file.
func (f *FileReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("engine: negative offset")
	}
	if off >= f.size {
		return 0, io.EOF
	}
	var eof error
	if rem := f.size - off; int64(len(p)) > rem {
		p, eof = p[:rem], io.EOF
	}
	n := len(p)
	i := sort.Search(len(f.starts), func(i int) bool { return f.starts[i]+f.chunks[i].Len > off })
	for len(p) > 0 && i < len(f.chunks) {
		in := off - f.starts[i]
		m := min(int64(len(p)), f.chunks[i].Len-in)
		got, err := f.st.GetRange(context.Background(), chunkstore.ID(f.chunks[i].ID), in, p[:m])
		if err == nil && int64(got) != m {
			err = fmt.Errorf("chunk %s short: %w", f.chunks[i].ID, ErrCorrupt)
		}
		if err != nil {
			return n - len(p), fmt.Errorf("engine: read file at %d: %w", off, err)
		}
		p, off = p[m:], off+m
		i++
	}
	return n, eof
}

// ReadOnly is the read-only API the mount (and `vmvault files`) build on.
// *Repo implements it; tests of the mount can substitute a fake.
type ReadOnly interface {
	ListVMs() ([]VM, error)
	ListRecoveryPoints(vm string) ([]*Pointer, error)
	LoadManifest(ctx context.Context, vm, id string) (*Manifest, error)
	OpenDisk(m *Manifest, disk string) (*DiskReader, error)
	OpenConfigFile(m *Manifest, name string) (*FileReader, error)
}

var _ ReadOnly = (*Repo)(nil)
