//go:build windows || (darwin && cgo) || (linux && cgo && fuse3)

// Package cgofuse serves a mount.Tree through cgofuse: WinFsp on Windows
// (no cgo needed), macFUSE on macOS (cgo), and libfuse3 on Linux (cgo plus
// libfuse3-dev and `-tags fuse3`, which is how the adapter is tested next
// to go-fuse). It is a thin, path-based adapter in the style of rclone's
// cmount: paths are resolved through the tree (with a cache of immutable
// nodes), open files live in a handle table, and every errno comes from one
// function, errc.
package cgofuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"sync"
	"time"

	"github.com/winfsp/cgofuse/fuse"

	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/vhdxfs/guest"
)

// Options tune Mount.
type Options struct {
	AllowOther bool
	Debug      bool
}

// Kernel cache timeouts (libfuse's high-level API has one value for the
// whole mount): entries inside recovery points never change; attributes of
// VM directories may, so they are kept for a minute at most. Listings are
// never cached, and there is no negative caching, so a new recovery point
// shows up at once.
const (
	entryTimeout = 3600
	attrTimeout  = 60
)

// Server is a mounted tree.
type Server struct {
	host *fuse.FileSystemHost
	fsys *fileSystem
	dir  string
	done chan bool
	once sync.Once
}

// Mount mounts t read-only at dir and returns once the file system serves
// requests (or failed to mount).
func Mount(t *mount.Tree, dir string, o Options) (*Server, error) {
	abs, err := mount.CheckMountpoint(dir)
	if err != nil {
		return nil, err
	}
	fsys := &fileSystem{t: t, handles: map[uint64]*mount.Handle{}, nodes: map[string]*mount.Node{}, ready: make(chan struct{})}
	host := fuse.NewFileSystemHost(fsys)
	host.SetCapReaddirPlus(true)
	host.SetUseIno(true) // stable inode numbers from the tree (FUSE3)
	s := &Server{host: host, fsys: fsys, dir: abs, done: make(chan bool, 1)}
	args := mountArgs(o)
	go func() { s.done <- host.Mount(abs, args) }()
	select {
	case <-fsys.ready:
		return s, nil
	case ok := <-s.done:
		s.done <- ok
		return nil, fmt.Errorf("mount: %s: the FUSE library refused to mount (see its message above)", abs)
	case <-time.After(30 * time.Second):
		host.Unmount()
		return nil, fmt.Errorf("mount: %s: timed out waiting for the FUSE mount", abs)
	}
}

func mountArgs(o Options) []string {
	var opts string
	switch runtime.GOOS {
	case "windows":
		// WinFsp: files owned by the user who mounts; cache file info.
		opts = fmt.Sprintf("uid=-1,gid=-1,FileInfoTimeout=%d,volname=vmvault", entryTimeout*1000)
	case "darwin":
		opts = fmt.Sprintf("ro,fsname=vmvault,volname=vmvault,entry_timeout=%d,attr_timeout=%d,negative_timeout=0", entryTimeout, attrTimeout)
	default:
		opts = fmt.Sprintf("ro,fsname=vmvault,subtype=vmvault,entry_timeout=%d,attr_timeout=%d,negative_timeout=0", entryTimeout, attrTimeout)
	}
	if o.AllowOther && runtime.GOOS != "windows" {
		opts += ",allow_other,default_permissions"
	}
	args := []string{"-o", opts}
	if o.Debug {
		args = append(args, "-d")
	}
	return args
}

// Dir is the mount point.
func (s *Server) Dir() string { return s.dir }

// Unmount unmounts the file system (on Linux as root a lazy detach, so open
// files do not keep it busy).
func (s *Server) Unmount() error {
	if !s.host.Unmount() {
		return fmt.Errorf("mount: unmount %s failed", s.dir)
	}
	return nil
}

// Wait blocks until the file system is unmounted, then releases the open
// handles the kernel did not release.
func (s *Server) Wait() {
	s.once.Do(func() {
		<-s.done
		s.fsys.closeAll()
	})
}

// errc is the one translation of tree errors to (negative) FUSE codes.
func errc(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, fs.ErrNotExist):
		return -fuse.ENOENT
	case errors.Is(err, mount.ErrNotDir):
		return -fuse.ENOTDIR
	case errors.Is(err, mount.ErrIsDir):
		return -fuse.EISDIR
	case errors.Is(err, mount.ErrNotLink), errors.Is(err, fs.ErrInvalid):
		return -fuse.EINVAL
	case errors.Is(err, mount.ErrReadOnly):
		return -fuse.EROFS
	case errors.Is(err, mount.ErrNoData):
		return -fuse.ENXIO
	case errors.Is(err, context.Canceled):
		return -fuse.EINTR
	}
	return -fuse.EIO
}

// maxCachedNodes bounds the path -> node cache; it is simply emptied when
// full (nodes are cheap to look up again).
const maxCachedNodes = 1 << 16

type fileSystem struct {
	fuse.FileSystemBase
	t     *mount.Tree
	ready chan struct{}
	once  sync.Once

	mu      sync.Mutex
	handles map[uint64]*mount.Handle
	nextFh  uint64
	nodes   map[string]*mount.Node // immutable nodes by cleaned path
}

var (
	_ = (fuse.FileSystemInterface)((*fileSystem)(nil))
	_ = (fuse.FileSystemOpenEx)((*fileSystem)(nil))
)

func (f *fileSystem) Init() { f.once.Do(func() { close(f.ready) }) }

// resolve finds the node of a FUSE path. Only volatile nodes (root, VM
// directories, latest) are looked up afresh every time; below them the
// path resolves from the cache.
func (f *fileSystem) resolve(p string) (*mount.Node, error) {
	p = mount.CleanPath(p)
	if p == "." {
		return f.t.Root(), nil
	}
	f.mu.Lock()
	n, ok := f.nodes[p]
	f.mu.Unlock()
	if ok {
		return n, nil
	}
	parentPath, name := ".", p
	if i := lastSlash(p); i >= 0 {
		parentPath, name = p[:i], p[i+1:]
	}
	parent, err := f.resolve(parentPath)
	if err != nil {
		return nil, err
	}
	n, err = parent.Lookup(context.Background(), name)
	if err != nil {
		return nil, err
	}
	if !n.Volatile() {
		f.mu.Lock()
		if len(f.nodes) >= maxCachedNodes {
			clear(f.nodes)
		}
		f.nodes[p] = n
		f.mu.Unlock()
	}
	return n, nil
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

// fillStat converts attributes; st_blocks counts the bytes that may hold
// data where the node knows them (.raw, volume.img).
func fillStat(n *mount.Node, fi guest.FileInfo, st *fuse.Stat_t) {
	*st = fuse.Stat_t{}
	st.Ino = fi.Ino
	st.Mode = mount.UnixMode(fi.Mode)
	st.Nlink = max(fi.Nlink, 1)
	st.Uid, st.Gid = fi.Uid, fi.Gid
	st.Size = fi.Size
	st.Blksize = 4096
	st.Blocks = (fi.Size + 511) / 512
	if alloc, ok := n.AllocatedBytes(); ok {
		st.Blocks = (alloc + 511) / 512
	}
	ts := fuse.NewTimespec(fi.ModTime)
	st.Atim, st.Mtim, st.Ctim, st.Birthtim = ts, ts, ts, ts
}

func (f *fileSystem) Getattr(path string, st *fuse.Stat_t, fh uint64) int {
	n, err := f.resolve(path)
	if err != nil {
		return errc(err)
	}
	fi, err := n.Stat(context.Background())
	if err != nil {
		return errc(err)
	}
	fillStat(n, fi, st)
	return 0
}

func (f *fileSystem) Statfs(path string, st *fuse.Statfs_t) int {
	*st = fuse.Statfs_t{Bsize: 4096, Frsize: 4096, Namemax: 255}
	return 0
}

func (f *fileSystem) Readlink(path string) (int, string) {
	n, err := f.resolve(path)
	if err != nil {
		return errc(err), ""
	}
	t, err := n.Readlink(context.Background())
	if err != nil {
		return errc(err), ""
	}
	return 0, t
}

func (f *fileSystem) Opendir(path string) (int, uint64) {
	n, err := f.resolve(path)
	if err != nil {
		return errc(err), ^uint64(0)
	}
	if !n.IsDir() {
		return -fuse.ENOTDIR, ^uint64(0)
	}
	return 0, 0
}

func (f *fileSystem) Releasedir(path string, fh uint64) int { return 0 }

func (f *fileSystem) Readdir(path string, fill func(name string, stat *fuse.Stat_t, ofst int64) bool, ofst int64, fh uint64) int {
	ctx := context.Background()
	n, err := f.resolve(path)
	if err != nil {
		return errc(err)
	}
	kids, err := n.ReadDir(ctx)
	if err != nil {
		return errc(err)
	}
	fill(".", nil, 0)
	fill("..", nil, 0)
	for _, k := range kids {
		fi, err := k.Stat(ctx)
		if err != nil {
			continue
		}
		var st fuse.Stat_t
		fillStat(k, fi, &st)
		if !fill(k.Name(), &st, 0) {
			break
		}
	}
	return 0
}

func (f *fileSystem) Open(path string, flags int) (int, uint64) {
	fi := fuse.FileInfo_t{Flags: flags}
	rc := f.OpenEx(path, &fi)
	return rc, fi.Fh
}

// OpenEx opens a file with KeepCache: its bytes never change.
func (f *fileSystem) OpenEx(path string, fi *fuse.FileInfo_t) int {
	if fi.Flags&(fuse.O_WRONLY|fuse.O_RDWR|fuse.O_APPEND|fuse.O_CREAT|fuse.O_TRUNC) != 0 {
		return -fuse.EROFS
	}
	n, err := f.resolve(path)
	if err != nil {
		return errc(err)
	}
	h, err := n.Open(context.Background())
	if err != nil {
		return errc(err)
	}
	f.mu.Lock()
	f.nextFh++
	fh := f.nextFh
	f.handles[fh] = h
	f.mu.Unlock()
	fi.Fh = fh
	fi.KeepCache = true
	return 0
}

func (f *fileSystem) CreateEx(path string, mode uint32, fi *fuse.FileInfo_t) int { return -fuse.EROFS }

func (f *fileSystem) handle(fh uint64) *mount.Handle {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handles[fh]
}

func (f *fileSystem) Read(path string, buff []byte, ofst int64, fh uint64) int {
	h := f.handle(fh)
	if h == nil {
		return -fuse.EBADF
	}
	n, err := h.ReadAt(buff, ofst)
	if err != nil && !errors.Is(err, io.EOF) {
		return errc(err)
	}
	return n
}

func (f *fileSystem) Release(path string, fh uint64) int {
	f.mu.Lock()
	h := f.handles[fh]
	delete(f.handles, fh)
	f.mu.Unlock()
	if h == nil {
		return -fuse.EBADF
	}
	return errc(h.Close())
}

func (f *fileSystem) closeAll() {
	f.mu.Lock()
	hs := f.handles
	f.handles = map[uint64]*mount.Handle{}
	f.mu.Unlock()
	for _, h := range hs {
		h.Close()
	}
}

// Write operations: the mount is read-only (the "ro" option makes the
// kernel refuse most of them before they get here).
func (f *fileSystem) Mknod(string, uint32, uint64) int         { return -fuse.EROFS }
func (f *fileSystem) Mkdir(string, uint32) int                 { return -fuse.EROFS }
func (f *fileSystem) Unlink(string) int                        { return -fuse.EROFS }
func (f *fileSystem) Rmdir(string) int                         { return -fuse.EROFS }
func (f *fileSystem) Link(string, string) int                  { return -fuse.EROFS }
func (f *fileSystem) Symlink(string, string) int               { return -fuse.EROFS }
func (f *fileSystem) Rename(string, string) int                { return -fuse.EROFS }
func (f *fileSystem) Chmod(string, uint32) int                 { return -fuse.EROFS }
func (f *fileSystem) Chown(string, uint32, uint32) int         { return -fuse.EROFS }
func (f *fileSystem) Utimens(string, []fuse.Timespec) int      { return -fuse.EROFS }
func (f *fileSystem) Create(string, int, uint32) (int, uint64) { return -fuse.EROFS, ^uint64(0) }
func (f *fileSystem) Truncate(string, int64, uint64) int       { return -fuse.EROFS }
func (f *fileSystem) Write(string, []byte, int64, uint64) int  { return -fuse.EROFS }
func (f *fileSystem) Setxattr(string, string, []byte, int) int { return -fuse.EROFS }
func (f *fileSystem) Removexattr(string, string) int           { return -fuse.EROFS }
