package mount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// rpState is one recovery point. Its Point is opened on first entry; disks
// are opened when disks/ or volumes/ is first listed, guest filesystems when
// their directory is first entered. Nothing is rebuilt afterwards: a
// recovery point never changes.
type rpState struct {
	t    *Tree
	vm   VM
	rp   RP
	path string

	mu       sync.Mutex
	pt       Point
	closed   bool
	disks    map[string]*diskState
	diskErrs map[string]error
	vols     []*volState
	volsDone bool
}

type diskState struct {
	name  string
	src   vdisk.Disk  // owned, closed with the recovery point
	cd    *cachedDisk // src through the shared cache
	synth *vhdx.Synth // nil if the disk cannot be shown as VHDX
}

type volState struct {
	name string
	v    vhdxfs.Volume
	d    *cachedDisk
	once sync.Once
	fs   guest.FS // nil: shown as volume.img
}

func (v *volState) disk() (*cachedDisk, bool) { return v.d, v.d != nil }

// point opens the recovery point once. A failure is not remembered, so a
// transient error (or an interrupted first lookup) does not stick.
func (r *rpState) point(ctx context.Context) (Point, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pt != nil {
		return r.pt, nil
	}
	if r.closed {
		return nil, fmt.Errorf("mount: %s: %w", r.path, ErrClosed)
	}
	if !r.t.enter() {
		return nil, fmt.Errorf("mount: %s: %w", r.path, ErrClosed)
	}
	defer r.t.leave()
	pt, err := r.t.src.Open(ctx, r.vm, r.rp)
	if err != nil {
		return nil, fmt.Errorf("mount: open recovery point %s: %w", r.path, err)
	}
	r.pt = pt
	r.disks = map[string]*diskState{}
	r.diskErrs = map[string]error{}
	r.t.mu.Lock()
	r.t.opened = append(r.t.opened, r)
	r.t.mu.Unlock()
	return pt, nil
}

// disk opens a disk of the recovery point once; errors are remembered per
// disk (a damaged manifest entry does not change) and logged once.
func (r *rpState) disk(ctx context.Context, name string) (*diskState, error) {
	pt, err := r.point(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d, ok := r.disks[name]; ok {
		return d, nil
	}
	if err, ok := r.diskErrs[name]; ok {
		return nil, err
	}
	src, err := pt.OpenDisk(ctx, name)
	if err != nil {
		err = fmt.Errorf("mount: %s: open disk %s: %w", r.path, name, err)
		if ctx.Err() == nil {
			r.diskErrs[name] = err
			r.t.logf("%v", err)
		}
		return nil, err
	}
	d := &diskState{name: name, src: src, cd: newCachedDisk(src, r.t.cache, r.t.cacheID(""))}
	d.cd.t = r.t // block read-ahead (see cachedDisk)
	// The .vhdx view keeps the disk's identity (DiskID, DataWriteGUID,
	// sector and block sizes), so tools see the disk that was backed up.
	if s, err := vhdx.NewSynth(src.Identity(), d.cd, d.cd.Allocated(), vhdx.SynthOptions{}); err != nil {
		r.t.logf("mount: %s: disk %s: no .vhdx view: %v", r.path, name, err)
	} else {
		d.synth = s
	}
	r.disks[name] = d
	return d, nil
}

// volumes lists the guest volumes of every disk, once.
func (r *rpState) volumes(ctx context.Context) ([]*volState, error) {
	pt, err := r.point(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	done, vols := r.volsDone, r.vols
	r.mu.Unlock()
	if done {
		return vols, nil
	}
	vols = nil
	for _, di := range pt.Disks() {
		d, err := r.disk(ctx, di.Name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			continue // logged by disk
		}
		vs, warns, err := vhdxfs.Volumes(newVolumeDisk(d.cd))
		for _, w := range warns {
			r.t.logf("mount: %s: disk %s: %s", r.path, di.Name, w)
		}
		if err != nil {
			r.t.logf("mount: %s: disk %s: no volumes: %v", r.path, di.Name, err)
			continue
		}
		for _, v := range vs {
			vols = append(vols, &volState{name: v.Name(di.Name), v: v, d: d.cd})
		}
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].name < vols[j].name })
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.volsDone {
		r.vols, r.volsDone = vols, true
	}
	return r.vols, nil
}

func (r *rpState) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	var errs []error
	for _, v := range r.vols {
		if v.fs != nil {
			errs = append(errs, v.fs.Close())
		}
	}
	for _, d := range r.disks {
		errs = append(errs, d.src.Close())
	}
	if r.pt != nil {
		errs = append(errs, r.pt.Close())
	}
	r.pt, r.disks, r.vols = nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mount: close %s: %w", r.path, err)
	}
	return nil
}

// ---- inside a recovery point ----

type rpOps struct{ r *rpState }

func (o rpOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	pt, err := o.r.point(ctx)
	if err != nil {
		return nil, err
	}
	mt := pt.Time()
	out := []*Node{
		n.child("config", dirInfo(mt), false, configDirOps{o.r, ""}),
		n.child("disks", dirInfo(mt), false, disksOps{o.r}),
		n.child("vm.json", fileInfo(int64(len(pt.ManifestJSON())), mt), false, bytesOps{pt.ManifestJSON()}),
		n.child("volumes", dirInfo(mt), false, volumesOps{o.r}),
	}
	return out, nil
}

func (o rpOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	return lookupInList(ctx, o, n, name)
}

type bytesOps struct{ b []byte }

func (o bytesOps) open(ctx context.Context, n *Node) (io.ReaderAt, func() error, error) {
	return bytes.NewReader(o.b), nil, nil
}

// configDirOps lists the configuration files below prefix ("" = config/
// itself); directories are implied by the slash-separated names.
type configDirOps struct {
	r      *rpState
	prefix string
}

func (o configDirOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	pt, err := o.r.point(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []*Node
	for _, cf := range pt.ConfigFiles() {
		rel := cf.Name
		if o.prefix != "" {
			var ok bool
			if rel, ok = strings.CutPrefix(cf.Name, o.prefix+"/"); !ok {
				continue
			}
		}
		first, rest, isDir := strings.Cut(rel, "/")
		if !validName(first) || seen[first] {
			continue
		}
		if isDir {
			if rest == "" {
				continue
			}
			seen[first] = true
			out = append(out, n.child(first, dirInfo(pt.Time()), false, configDirOps{o.r, path.Join(o.prefix, first)}))
			continue
		}
		seen[first] = true
		out = append(out, n.child(first, fileInfo(cf.Size, cf.ModTime), false, configFileOps{o.r, cf.Name}))
	}
	sortNodes(out)
	return out, nil
}

func (o configDirOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	return lookupInList(ctx, o, n, name)
}

type configFileOps struct {
	r    *rpState
	name string
}

func (o configFileOps) cacheable() bool { return true }

func (o configFileOps) open(ctx context.Context, n *Node) (io.ReaderAt, func() error, error) {
	pt, err := o.r.point(ctx)
	if err != nil {
		return nil, nil, err
	}
	f, err := pt.OpenConfig(ctx, o.name)
	if err != nil {
		return nil, nil, fmt.Errorf("mount: open %s: %w", n.path, err)
	}
	return f, f.Close, nil
}

type disksOps struct{ r *rpState }

func (o disksOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	pt, err := o.r.point(ctx)
	if err != nil {
		return nil, err
	}
	mt := pt.Time()
	var out []*Node
	for _, di := range pt.Disks() {
		if !validName(di.Name + ".raw") {
			continue
		}
		d, err := o.r.disk(ctx, di.Name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			continue // logged once by disk
		}
		out = append(out, n.child(di.Name+".raw", fileInfo(d.cd.Size(), mt), false, diskFileOps{d, false}))
		if d.synth != nil {
			out = append(out, n.child(di.Name+".vhdx", fileInfo(d.synth.Size(), mt), false, diskFileOps{d, true}))
		}
	}
	sortNodes(out)
	return out, nil
}

func (o disksOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	return lookupInList(ctx, o, n, name)
}

type diskFileOps struct {
	d    *diskState
	vhdx bool
}

// allocated is nil for the .vhdx view (compact already: every byte of it
// is structure or payload) and the disk's map for the .raw file.
func (o diskFileOps) allocated() []vdisk.Extent {
	if o.vhdx {
		return nil
	}
	return o.d.cd.Allocated()
}

func (o diskFileOps) open(ctx context.Context, n *Node) (io.ReaderAt, func() error, error) {
	if o.vhdx {
		return o.d.synth, nil, nil
	}
	return o.d.cd, nil, nil
}

type volumesOps struct{ r *rpState }

func (o volumesOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	vols, err := o.r.volumes(ctx)
	if err != nil {
		return nil, err
	}
	mt := o.r.rp.Time
	if pt, err := o.r.point(ctx); err == nil {
		mt = pt.Time()
	}
	out := make([]*Node, 0, len(vols))
	for _, v := range vols {
		if validName(v.name) {
			out = append(out, n.child(v.name, dirInfo(mt), false, volumeOps{o.r, v}))
		}
	}
	sortNodes(out)
	return out, nil
}

func (o volumesOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	return lookupInList(ctx, o, n, name)
}

// volumeOps is a volume directory: the guest filesystem's root, or just
// volume.img when we do not read the filesystem (or it is too damaged to
// open; the raw bytes are still there to be examined with other tools).
type volumeOps struct {
	r *rpState
	v *volState
}

func (o volumeOps) fs(n *Node) guest.FS {
	o.v.once.Do(func() {
		if !n.t.enter() {
			return
		}
		defer n.t.leave()
		if o.v.v.FSType == "" {
			return
		}
		fsys, err := o.v.v.OpenFS()
		if err != nil {
			n.t.logf("mount: %s: %s filesystem unreadable, showing volume.img: %v", n.path, o.v.v.FSType, err)
			return
		}
		o.v.fs = fsys
	})
	return o.v.fs
}

func (o volumeOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	if fsys := o.fs(n); fsys != nil {
		return guestDirOps{fsys, "."}.list(ctx, n)
	}
	sec := o.v.v.Section()
	var alloc []vdisk.Extent
	if d, ok := o.v.disk(); ok {
		alloc = clipExtents(d.Allocated(), o.v.v.Partition.Start, sec.Size())
	}
	return []*Node{n.child("volume.img", fileInfo(sec.Size(), n.info.ModTime), false, volumeImgOps{sec, alloc})}, nil
}

func (o volumeOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	if fsys := o.fs(n); fsys != nil {
		return guestDirOps{fsys, "."}.lookup(ctx, n, name)
	}
	return lookupInList(ctx, o, n, name)
}

type volumeImgOps struct {
	sec   *io.SectionReader
	alloc []vdisk.Extent // nil: unknown, all data
}

func (o volumeImgOps) allocated() []vdisk.Extent { return o.alloc }

func (o volumeImgOps) open(ctx context.Context, n *Node) (io.ReaderAt, func() error, error) {
	return o.sec, nil, nil
}

// ---- guest filesystems ----

// guestDirOps is a directory of a guest filesystem; gp is its io/fs path.
type guestDirOps struct {
	fsys guest.FS
	gp   string
}

func (o guestDirOps) join(name string) string {
	if o.gp == "." {
		return name
	}
	return o.gp + "/" + name
}

// node converts a guest entry. Attributes are the guest's (mode, size,
// mtime, owner); the inode number is the tree's, and hard links are shown
// as separate files (Nlink 1), which is what a copy-out wants. Devices,
// FIFOs and sockets have no data to recover and are left out.
func (o guestDirOps) node(n *Node, fi guest.FileInfo) *Node {
	gp := o.join(fi.Name)
	info := fi
	switch {
	case fi.Mode.IsDir():
		info.Nlink = 2
		return n.child(fi.Name, info, false, guestDirOps{o.fsys, gp})
	case fi.Mode&fs.ModeSymlink != 0:
		info.Nlink = 1
		info.Size = int64(len(fi.Target))
		return n.child(fi.Name, info, false, guestLinkOps{o.fsys, gp, fi.Target})
	case fi.Mode.IsRegular():
		info.Nlink = 1
		return n.child(fi.Name, info, false, guestFileOps{o.fsys, gp})
	}
	return nil
}

func (o guestDirOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	if !n.t.enter() {
		return nil, fmt.Errorf("mount: %s: %w", n.path, ErrClosed)
	}
	defer n.t.leave()
	ents, err := o.fsys.ReadDir(o.gp)
	if err != nil {
		return nil, fmt.Errorf("mount: %s: %w", n.path, err)
	}
	out := make([]*Node, 0, len(ents))
	for _, fi := range ents {
		if c := o.node(n, fi); c != nil {
			out = append(out, c)
		}
	}
	return out, nil // guest.FS lists sorted by name
}

func (o guestDirOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	if !n.t.enter() {
		return nil, fmt.Errorf("mount: %s: %w", n.path, ErrClosed)
	}
	defer n.t.leave()
	fi, err := o.fsys.Stat(o.join(name))
	if err != nil {
		return nil, fmt.Errorf("mount: %s/%s: %w", n.path, name, err)
	}
	c := o.node(n, fi)
	if c == nil {
		return nil, fmt.Errorf("mount: %s/%s: special file not shown: %w", n.path, name, fs.ErrNotExist)
	}
	return c, nil
}

type guestFileOps struct {
	fsys guest.FS
	gp   string
}

func (o guestFileOps) cacheable() bool { return true }

func (o guestFileOps) open(ctx context.Context, n *Node) (io.ReaderAt, func() error, error) {
	f, err := o.fsys.Open(o.gp)
	if err != nil {
		return nil, nil, fmt.Errorf("mount: open %s: %w", n.path, err)
	}
	return f, f.Close, nil
}

type guestLinkOps struct {
	fsys   guest.FS
	gp     string
	target string
}

func (o guestLinkOps) readlink(ctx context.Context, n *Node) (string, error) {
	if o.target != "" {
		return o.target, nil
	}
	t, err := o.fsys.Readlink(o.gp)
	if err != nil {
		return "", fmt.Errorf("mount: readlink %s: %w", n.path, err)
	}
	return t, nil
}
