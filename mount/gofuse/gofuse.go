//go:build linux

// Package gofuse serves a mount.Tree through go-fuse v2 on Linux. It is a
// thin adapter in the style of go-fuse's zipfs: one node type wrapping a
// mount.Node, lazy Lookup/Readdir, FOPEN_KEEP_CACHE and long entry/attr
// timeouts for everything inside a recovery point (it never changes), short
// ones for the root, VM directories and latest links (new recovery points
// appear without a remount). All errno values come from one function, errno.
package gofuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/vhdxfs/guest"
)

// Kernel cache timeouts. Immutable entries can be cached for long: a
// recovery point never changes. Volatile ones (root, VM directories,
// latest) must notice a new recovery point within about a second.
const (
	LongTimeout     = time.Hour
	VolatileTimeout = time.Second
)

// Options tune Mount.
type Options struct {
	AllowOther bool // let other users see the mount (adds default_permissions)
	Debug      bool // log every FUSE request

	// openRequests keeps answering OPEN with a handle, as on a kernel
	// without FUSE_NO_OPEN_SUPPORT (tests of that path).
	openRequests bool
}

// Server is a mounted tree.
type Server struct {
	srv *fuse.Server
	dir string
	hc  *handleCache
}

// Mount mounts t read-only at dir and starts serving it in the background.
// A mount point that does not exist, is not a directory or is already a
// mount point gives one clear error.
func Mount(t *mount.Tree, dir string, o Options) (*Server, error) {
	abs, err := mount.CheckMountpoint(dir)
	if err != nil {
		return nil, err
	}
	long := LongTimeout
	opts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:   o.AllowOther,
			FsName:       "vmvault",
			Name:         "vmvault",
			Options:      []string{"ro"},
			DirectMount:  true, // mount(2) as root, fusermount3 otherwise
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// The kernel keeps symlink targets: guest links never change,
			// and latest is a new inode when it moves (mount.Node.Ino).
			// Without it every path through latest cost a READLINK.
			EnableSymlinkCaching: true,
			// Replies are in memory (lent cache blocks, decoded bytes):
			// splicing them means one more copy into a pipe, and a 1 MiB
			// read plus its header is more than the default pipe-max-size,
			// so go-fuse logged "trySplice" and fell back anyway.
			DisableSplice: true,
			Debug:         o.Debug,
		},
		EntryTimeout:   &long,
		AttrTimeout:    &long,
		RootStableAttr: &gofs.StableAttr{Ino: mount.RootIno},
		// No negative caching: a name that does not exist yet may be the
		// next recovery point.
		NullPermissions: true,
	}
	if o.AllowOther {
		// Other users then get the guest's permission bits checked by the
		// kernel instead of reading everything.
		opts.MountOptions.Options = append(opts.MountOptions.Options, "default_permissions")
	}
	hc := newHandleCache(maxSharedHandles)
	root := &node{n: t.Root(), hc: hc}
	srv, err := gofs.Mount(abs, root, opts)
	if err != nil {
		return nil, fmt.Errorf("mount: %s: %w", abs, err)
	}
	// Files are opened without OPEN requests where the kernel supports it
	// (handles.go); the INIT exchange is over once Mount returns.
	ks := srv.KernelSettings()
	hc.noOpen.Store(ks != nil && ks.Flags64()&fuse.CAP_NO_OPEN_SUPPORT != 0 && !o.openRequests)
	setReadAhead(abs, readAheadKB)
	return &Server{srv: srv, dir: abs, hc: hc}, nil
}

// readAheadKB is the kernel read-ahead of the mount. The kernel caps the
// FUSE read-ahead that INIT may ask for at the mount's initial 128 KiB, and
// its sequential reads are then 128 KiB requests whatever MaxReadAhead and
// max_pages allow; raising the mount's bdi read_ahead_kb afterwards makes
// them 1 MiB (one cache block: one lookup, one reply, a quarter of the
// context switches per byte). Larger values only queue more 1 MiB requests.
const readAheadKB = 1024

// setReadAhead sets the read-ahead of the mount at dir through sysfs
// (/sys/class/bdi/MAJOR:MINOR/read_ahead_kb). Only root may; for anybody
// else the mount keeps working at the default, so failure is silent.
func setReadAhead(dir string, kb int) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	_ = os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}

// Dir is the absolute mount point.
func (s *Server) Dir() string { return s.dir }

// Wait blocks until the file system is unmounted and the server stopped.
func (s *Server) Wait() {
	s.srv.Wait()
	s.hc.closeAll()
}

// Unmount unmounts the file system. When files are still open (EBUSY) it
// detaches it lazily instead: the mount point is free at once and the
// server stops when the last open file is closed.
func (s *Server) Unmount() error {
	var err error
	for i := 0; i < 3; i++ {
		if err = s.srv.Unmount(); err == nil {
			s.hc.closeAll()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if derr := syscall.Unmount(s.dir, syscall.MNT_DETACH); derr == nil {
		return nil
	}
	if lerr := fuseUnmountLazy(s.dir); lerr == nil {
		return nil
	}
	return fmt.Errorf("mount: unmount %s: %w", s.dir, err)
}

func fuseUnmountLazy(dir string) error {
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(bin); err == nil {
			return exec.Command(p, "-u", "-z", dir).Run()
		}
	}
	return errors.New("no fusermount")
}

// errno is the one translation of tree errors to FUSE status codes.
func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, mount.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, mount.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, mount.ErrNotLink), errors.Is(err, fs.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, mount.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, mount.ErrNoData):
		return syscall.ENXIO
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

// node is the one inode type: a mount.Node plus go-fuse's Inode.
type node struct {
	gofs.Inode
	n  *mount.Node
	hc *handleCache
}

var (
	_ = (gofs.NodeLookuper)((*node)(nil))
	_ = (gofs.NodeReaddirer)((*node)(nil))
	_ = (gofs.NodeGetattrer)((*node)(nil))
	_ = (gofs.NodeOpener)((*node)(nil))
	_ = (gofs.NodeReader)((*node)(nil))
	_ = (gofs.NodeReleaser)((*node)(nil))
	_ = (gofs.NodeReadlinker)((*node)(nil))
	_ = (gofs.NodeStatfser)((*node)(nil))
	_ = (gofs.NodeLseeker)((*node)(nil))
	_ = (gofs.NodeFlusher)((*node)(nil))
	_ = (gofs.NodeGetxattrer)((*node)(nil))
	_ = (gofs.NodeListxattrer)((*node)(nil))
	_ = (gofs.NodeOnForgetter)((*node)(nil))
	_ = (gofs.NodeOpendirHandler)((*node)(nil))
)

func timeout(n *mount.Node) time.Duration {
	if n.Volatile() {
		return VolatileTimeout
	}
	return LongTimeout
}

// fillAttr converts attributes. st_blocks counts the bytes that may hold
// data where the node knows them (.raw, volume.img), so du and cp --sparse
// see the disk's real size.
func fillAttr(n *mount.Node, fi guest.FileInfo, a *fuse.Attr) {
	a.Ino = fi.Ino
	a.Mode = mount.UnixMode(fi.Mode)
	a.Size = uint64(max(fi.Size, 0))
	a.Blocks = (a.Size + 511) / 512
	if alloc, ok := n.AllocatedBytes(); ok {
		a.Blocks = uint64(alloc+511) / 512
	}
	a.Blksize = 4096
	a.Nlink = max(fi.Nlink, 1)
	a.Uid, a.Gid = fi.Uid, fi.Gid
	mt := fi.ModTime
	if mt.Unix() < 0 {
		mt = time.Unix(0, 0)
	}
	a.SetTimes(&mt, &mt, &mt)
}

func (x *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	c, err := x.n.Lookup(ctx, name)
	if err != nil {
		return nil, errno(err)
	}
	fi, err := c.Stat(ctx)
	if err != nil {
		return nil, errno(err)
	}
	fillAttr(c, fi, &out.Attr)
	out.SetEntryTimeout(timeout(c))
	out.SetAttrTimeout(timeout(c))
	st := gofs.StableAttr{Mode: mount.UnixMode(fi.Mode) & syscall.S_IFMT, Ino: c.Ino()}
	return x.NewInode(ctx, &node{n: c, hc: x.hc}, st), 0
}

func (x *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	kids, err := x.n.ReadDir(ctx)
	if err != nil {
		return nil, errno(err)
	}
	// "." and ".." as a local filesystem lists them (ls -a, tools that
	// count entries).
	parentIno := x.n.Ino()
	if _, p := x.Parent(); p != nil {
		parentIno = p.StableAttr().Ino
	}
	ents := make([]fuse.DirEntry, 0, len(kids)+2)
	ents = append(ents,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: x.n.Ino()},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parentIno})
	for _, k := range kids {
		ents = append(ents, fuse.DirEntry{Name: k.Name(), Mode: mount.UnixMode(k.Mode()), Ino: k.Ino()})
	}
	return gofs.NewListDirStream(ents), 0
}

// OpendirHandle lets the kernel cache the listing of a directory inside a
// recovery point (FOPEN_CACHE_DIR): it never changes, so a second ls, find
// or cp -a of it needs no READDIRPLUS. The root, VM directories and
// anything else volatile are listed anew each time (new recovery points).
func (x *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	var fl uint32
	if !x.n.Volatile() {
		fl = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	}
	return &dirHandle{x: x}, fl, 0
}

// dirHandle is an open directory: its listing, made by the first read.
type dirHandle struct {
	x  *node
	ds gofs.DirStream
}

var (
	_ = (gofs.FileReaddirenter)((*dirHandle)(nil))
	_ = (gofs.FileSeekdirer)((*dirHandle)(nil))
	_ = (gofs.FileReleasedirer)((*dirHandle)(nil))
)

func (d *dirHandle) stream(ctx context.Context) syscall.Errno {
	if d.ds != nil {
		return 0
	}
	d.x.hc.listings.Add(1)
	ds, e := d.x.Readdir(ctx)
	if e != 0 {
		return e
	}
	d.ds = ds
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if e := d.stream(ctx); e != 0 {
		return nil, e
	}
	if !d.ds.HasNext() {
		return nil, 0
	}
	de, e := d.ds.Next()
	return &de, e
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if e := d.stream(ctx); e != 0 {
		return e
	}
	if sd, ok := d.ds.(gofs.FileSeekdirer); ok {
		return sd.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	if d.ds != nil {
		d.ds.Close()
	}
}

func (x *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fi, err := x.n.Stat(ctx)
	if err != nil {
		return errno(err)
	}
	fillAttr(x.n, fi, &out.Attr)
	out.SetTimeout(timeout(x.n))
	return 0
}

func (x *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	t, err := x.n.Readlink(ctx)
	if err != nil {
		return nil, errno(err)
	}
	return []byte(t), 0
}

func (x *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	return 0
}

// handle is an open file.
type handle struct{ h *mount.Handle }

func (x *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	x.hc.opens.Add(1)
	if x.hc.noOpen.Load() {
		// The kernel opens files itself from now on (handles.go).
		return nil, 0, syscall.ENOSYS
	}
	h, err := x.n.Open(ctx)
	if err != nil {
		return nil, 0, errno(err)
	}
	// The bytes of a file never change, so the page cache survives
	// close/open.
	return &handle{h}, fuse.FOPEN_KEEP_CACHE, 0
}

func (x *node) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, done, e := x.handle(ctx, f)
	if e != 0 {
		return nil, e
	}
	defer done()
	// A lent block stays valid after done: the loan holds the cache
	// block, not the handle.
	if bufs, release, ok := h.Lend(off, len(dest)); ok {
		return &lentResult{bufs: bufs, release: release}, 0
	}
	n, err := h.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// lentResult is a read reply written straight from the tree's block cache
// (mount.Handle.Lend): go-fuse hands Slices to writev(2) and calls Done
// after the write, which ends the loan. Copying a cached block into dest
// first cost as much CPU as decoding it.
type lentResult struct {
	bufs    [][]byte
	release func()
}

func (r *lentResult) Size() int {
	n := 0
	for _, b := range r.bufs {
		n += len(b)
	}
	return n
}

// Slices is go-fuse's vectored-write interface.
func (r *lentResult) Slices() ([][]byte, fuse.Status) { return r.bufs, fuse.OK }

// Bytes serves the paths that want one buffer (splice disabled, no
// vectored write).
func (r *lentResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	buf = buf[:0]
	for _, b := range r.bufs {
		buf = append(buf, b...)
	}
	return buf, fuse.OK
}

func (r *lentResult) Done() {
	if r.release != nil {
		r.release()
		r.release, r.bufs = nil, nil
	}
}

// Lseek answers SEEK_DATA/SEEK_HOLE from the allocation map, so sparse
// copies of a .raw skip its holes without reading them.
func (x *node) Lseek(ctx context.Context, f gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != seekData && whence != seekHole {
		return 0, syscall.EINVAL
	}
	h, done, e := x.handle(ctx, f)
	if e != 0 {
		return 0, e
	}
	defer done()
	var r int64
	var err error
	switch whence {
	case seekData:
		r, err = h.SeekData(int64(off))
	case seekHole:
		r, err = h.SeekHole(int64(off))
	default:
		return 0, syscall.EINVAL
	}
	if err != nil {
		return 0, errno(err)
	}
	return uint64(r), 0
}

// lseek whence values (unix.SEEK_DATA/SEEK_HOLE; not in package syscall).
const (
	seekData = 3
	seekHole = 4
)

// Flush, Getxattr and Listxattr answer ENOSYS, which the kernel remembers
// for the whole mount: it stops sending them (close(2) then needs no
// FLUSH round trip; listxattr and getxattr fail with EOPNOTSUPP at once,
// which cp -a, rsync -X and tar --xattrs take as "no xattrs here"). go-fuse's
// defaults (success, an empty list, ENOATTR) cost a round trip each time,
// up to three per file of a folder copy.
func (x *node) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno { return syscall.ENOSYS }

func (x *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

func (x *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

// handle returns the tree handle a request works on: the one OPEN made,
// or without one (the kernel opened the file itself, handles.go) the
// node's shared handle. done ends the use.
func (x *node) handle(ctx context.Context, f gofs.FileHandle) (h *mount.Handle, done func(), e syscall.Errno) {
	if fh, ok := f.(*handle); ok {
		return fh.h, func() {}, 0
	}
	if f != nil {
		return nil, nil, syscall.EBADF
	}
	sh, err := x.hc.acquire(ctx, x)
	if err != nil {
		return nil, nil, errno(err)
	}
	return sh.h, func() { x.hc.release(sh) }, 0
}

// OnForget closes the node's shared handle: the kernel dropped the inode,
// so no request for it will come.
func (x *node) OnForget() { x.hc.forget(x) }

func (x *node) Release(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	if fh, ok := f.(*handle); ok {
		return errno(fh.h.Close())
	}
	return 0
}
