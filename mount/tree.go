package mount

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmvault/vmvault/vhdxfs/guest"
)

// Options tune a Tree. The zero value is valid.
type Options struct {
	// CacheSize bounds the decoded disk data kept in memory, shared by all
	// open files (default 256 MiB).
	CacheSize int64
	// BlockSize is the cache and read-ahead granularity (default 1 MiB).
	BlockSize int64
	// ReadAhead is the largest read-ahead window of a sequential reader
	// (default 8 MiB; negative disables read-ahead).
	ReadAhead int64
	// Refresh is how long a listing of the root or of a VM directory is
	// reused before the Source is asked again (default 1 s). A lookup of a
	// name not in the listing asks again sooner, so a new recovery point can
	// be entered as soon as it is committed.
	Refresh time.Duration
	// Logf receives read errors (with the chunk ID the engine puts in them)
	// and entries the tree had to skip. Default: the standard logger.
	Logf func(format string, args ...any)
}

// Defaults.
const (
	DefaultCacheSize = 256 << 20
	DefaultBlockSize = 1 << 20
	DefaultReadAhead = 8 << 20
	DefaultRefresh   = time.Second
	// missRefresh is the shortest interval between two Source listings
	// caused by lookups of unknown names (shells probe many names).
	missRefresh = 100 * time.Millisecond
	// prefetchers bounds the handles reading ahead at once per tree, and
	// prefetchParallel the blocks each of them fetches at once.
	prefetchers      = 4
	prefetchParallel = 4
	// diskPrefetchers bounds the background block fills per tree.
	diskPrefetchers = 8
)

// Tree is the recovery tree. All methods are safe for concurrent use.
type Tree struct {
	src   Source
	opts  Options
	cache *blockCache
	start time.Time
	root  *Node
	rs    *rootState

	prefetchSlots chan struct{}
	diskSlots     chan struct{} // background block fills (disk read-ahead)
	bufPool       sync.Pool
	idSeq         atomic.Uint64
	fileIDs       sync.Map // tree path -> cache ID of a cached file

	closing atomic.Bool
	active  atomic.Int64

	mu     sync.Mutex
	opened []*rpState // recovery points with an open Point, closed by Close

	errMu                sync.Mutex
	errStart             time.Time
	errCount, errDropped int
}

// New returns the tree of src. Nothing is read until it is used.
func New(src Source, opts Options) *Tree {
	if opts.CacheSize <= 0 {
		opts.CacheSize = DefaultCacheSize
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.ReadAhead == 0 {
		opts.ReadAhead = DefaultReadAhead
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	t := &Tree{
		src:           src,
		opts:          opts,
		cache:         newBlockCache(opts.CacheSize, opts.BlockSize),
		start:         time.Now(),
		prefetchSlots: make(chan struct{}, prefetchers),
		diskSlots:     make(chan struct{}, diskPrefetchers),
	}
	bs := opts.BlockSize
	t.bufPool.New = func() any { b := make([]byte, bs); return &b }
	t.rs = &rootState{vms: map[string]*vmState{}}
	t.root = &Node{t: t, path: ".", volatile: true, ops: rootOps{t.rs},
		info: guest.FileInfo{Name: ".", Mode: fs.ModeDir | 0o555, ModTime: t.start, Ino: RootIno, Nlink: 2}}
	return t
}

// cacheID numbers a disk ("") or a cached file (its tree path) for the
// block cache. A file keeps its number, so the same file opened again (cp
// after a first read, a second reader) finds its blocks; numbers are never
// derived from hashes, so two files can never share blocks.
func (t *Tree) cacheID(path string) uint64 {
	if path == "" {
		return t.idSeq.Add(1)
	}
	if id, ok := t.fileIDs.Load(path); ok {
		return id.(uint64)
	}
	id, _ := t.fileIDs.LoadOrStore(path, t.idSeq.Add(1))
	return id.(uint64)
}

// RootIno is the inode number of the root (FUSE's FUSE_ROOT_ID).
const RootIno = 1

func (t *Tree) logf(format string, args ...any) { t.opts.Logf(format, args...) }

// Read errors are logged at most readErrBurst per readErrWindow: a damaged
// chunk under a file that a program keeps retrying must not flood the log.
const (
	readErrBurst  = 20
	readErrWindow = 10 * time.Second
)

// logReadError logs a failed read, rate-limited (the error path only, so
// the mutex costs nothing on good reads).
func (t *Tree) logReadError(err error) {
	t.errMu.Lock()
	now := time.Now()
	if now.Sub(t.errStart) > readErrWindow {
		if t.errDropped > 0 {
			t.logf("mount: %d more read errors not logged", t.errDropped)
		}
		t.errStart, t.errCount, t.errDropped = now, 0, 0
	}
	t.errCount++
	show := t.errCount <= readErrBurst
	if !show {
		t.errDropped++
	}
	t.errMu.Unlock()
	if show {
		t.logf("%v", err)
	}
}

// enter and leave bracket every read of source data, so that Close can
// wait for reads still running (a FUSE request racing an unmount) before it
// closes disks under them. Two atomic adds, no lock.
func (t *Tree) enter() bool {
	t.active.Add(1)
	if t.closing.Load() {
		t.active.Add(-1)
		return false
	}
	return true
}

func (t *Tree) leave() { t.active.Add(-1) }

// Root returns the root directory.
func (t *Tree) Root() *Node { return t.root }

// Close waits (up to 30 s) for running reads, then closes every opened
// recovery point, guest filesystem and disk. Reads after Close fail with
// ErrClosed.
func (t *Tree) Close() error {
	if t.closing.Swap(true) {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for t.active.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	t.mu.Lock()
	rps := t.opened
	t.opened = nil
	t.mu.Unlock()
	var errs []error
	for _, r := range rps {
		errs = append(errs, r.close())
	}
	return errors.Join(errs...)
}

// Node is one entry of the tree: a cheap, immutable description (name,
// attributes, stable inode number) plus the operations of its kind. Nodes
// may be created anew on every lookup; their state lives in shared objects.
type Node struct {
	t        *Tree
	path     string
	info     guest.FileInfo
	volatile bool
	ops      any // dirOps, fileOps or linkOps
}

type dirOps interface {
	list(ctx context.Context, n *Node) ([]*Node, error)
	lookup(ctx context.Context, n *Node, name string) (*Node, error)
}

type fileOps interface {
	// open returns the file's bytes and, when the handle owns them, a
	// closer.
	open(ctx context.Context, n *Node) (io.ReaderAt, func() error, error)
}

// cacheableOps marks files whose reader is not cached underneath (guest
// and config files): their handles read through the block cache, keyed by
// the inode number.
type cacheableOps interface {
	cacheable() bool
}

type linkOps interface {
	readlink(ctx context.Context, n *Node) (string, error)
}

// statOps is implemented by volatile nodes whose attributes change (the
// VM directories' mtime, the latest link's target length).
type statOps interface {
	stat(ctx context.Context, n *Node) (guest.FileInfo, error)
}

// Path is the node's path in the tree ("." for the root, "vm/rp/disks/d.raw").
func (n *Node) Path() string { return n.path }

// Name is the base name ("." for the root).
func (n *Node) Name() string { return n.info.Name }

// Info describes the node as of its creation. Ino is the stable inode
// number (a hash of the path; for a latest link, of the path and the
// target), Nlink is 1 for files: guest hard links are shown as independent
// files.
func (n *Node) Info() guest.FileInfo { return n.info }

// Ino is the stable inode number.
func (n *Node) Ino() uint64 { return n.info.Ino }

// Mode is the file mode (type and permission bits).
func (n *Node) Mode() fs.FileMode { return n.info.Mode }

// IsDir reports whether the node is a directory.
func (n *Node) IsDir() bool { return n.info.Mode.IsDir() }

// Volatile reports whether the node can change while mounted (the root, VM
// directories and latest links). Adapters give the kernel short cache
// timeouts for these and long ones for everything else, which never changes.
func (n *Node) Volatile() bool { return n.volatile }

// Stat returns current attributes: Info for immutable nodes, a fresh look
// for volatile ones.
func (n *Node) Stat(ctx context.Context) (guest.FileInfo, error) {
	if s, ok := n.ops.(statOps); ok {
		return s.stat(ctx, n)
	}
	return n.info, nil
}

// Lookup finds a child of a directory without following symlinks.
func (n *Node) Lookup(ctx context.Context, name string) (*Node, error) {
	d, ok := n.ops.(dirOps)
	if !ok {
		return nil, fmt.Errorf("mount: %s: %w", n.path, ErrNotDir)
	}
	if !validName(name) {
		return nil, fmt.Errorf("mount: %s: %q: %w", n.path, name, fs.ErrNotExist)
	}
	return d.lookup(ctx, n, name)
}

// ReadDir lists a directory, sorted by name, without "." and "..".
func (n *Node) ReadDir(ctx context.Context) ([]*Node, error) {
	d, ok := n.ops.(dirOps)
	if !ok {
		return nil, fmt.Errorf("mount: %s: %w", n.path, ErrNotDir)
	}
	return d.list(ctx, n)
}

// Open opens a regular file.
func (n *Node) Open(ctx context.Context) (*Handle, error) {
	f, ok := n.ops.(fileOps)
	if !ok {
		if n.IsDir() {
			return nil, fmt.Errorf("mount: open %s: %w", n.path, ErrIsDir)
		}
		return nil, fmt.Errorf("mount: open %s: not a regular file: %w", n.path, fs.ErrInvalid)
	}
	if !n.t.enter() {
		return nil, fmt.Errorf("mount: open %s: %w", n.path, ErrClosed)
	}
	defer n.t.leave()
	r, closer, err := f.open(ctx, n)
	if err != nil {
		return nil, err
	}
	if c, ok := n.ops.(cacheableOps); ok && c.cacheable() {
		// No block read-ahead at this level: the handle's read-ahead
		// already runs ahead of a sequential reader, and a second layer
		// here measured no faster on a 400 MB file while stalling copies
		// of folders of small files for up to a minute.
		r = newCachedDisk(fileDisk{r, n.info.Size}, n.t.cache, n.t.cacheID(n.path))
	}
	h := &Handle{t: n.t, path: n.path, r: r, size: n.info.Size, closer: closer}
	if a, ok := n.ops.(allocOps); ok {
		h.alloc = a.allocated()
	}
	return h, nil
}

// Readlink returns a symlink's target.
func (n *Node) Readlink(ctx context.Context) (string, error) {
	l, ok := n.ops.(linkOps)
	if !ok {
		return "", fmt.Errorf("mount: readlink %s: %w", n.path, ErrNotLink)
	}
	return l.readlink(ctx, n)
}

// child makes a node below n.
func (n *Node) child(name string, info guest.FileInfo, volatile bool, ops any) *Node {
	p := name
	if n.path != "." {
		p = n.path + "/" + name
	}
	info.Name = name
	info.Ino = inoOf(p)
	if info.Nlink == 0 {
		info.Nlink = 1
		if info.Mode.IsDir() {
			info.Nlink = 2
		}
	}
	return &Node{t: n.t, path: p, info: info, volatile: volatile, ops: ops}
}

// inoOf derives a stable inode number from a tree path: the same file has
// the same number in every mount and in `vmvault files`, and no table of
// numbers has to be kept. 0 and RootIno are never returned.
func inoOf(p string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(p))
	v := h.Sum64()
	if v <= RootIno {
		v += 2
	}
	return v
}

func dirInfo(mt time.Time) guest.FileInfo {
	return guest.FileInfo{Mode: fs.ModeDir | 0o555, ModTime: mt}
}

func fileInfo(size int64, mt time.Time) guest.FileInfo {
	return guest.FileInfo{Mode: 0o444, Size: size, ModTime: mt}
}

func linkInfo(target string, mt time.Time) guest.FileInfo {
	return guest.FileInfo{Mode: fs.ModeSymlink | 0o777, Size: int64(len(target)), ModTime: mt, Target: target}
}

// validName reports whether name can be one element of a path.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= 1024 && !strings.ContainsAny(name, "/\x00")
}

// safeDirName turns a VM name into a usable directory name.
func safeDirName(name string) string {
	s := strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == 0 {
			return '_'
		}
		return r
	}, name)
	if s == "" || s == "." || s == ".." {
		s = "_" + s
	}
	return s
}

// lookupInList finds name in a directory by listing it; for the small
// directories of the tree itself (a recovery point, disks/, config/).
func lookupInList(ctx context.Context, d dirOps, n *Node, name string) (*Node, error) {
	kids, err := d.list(ctx, n)
	if err != nil {
		return nil, err
	}
	i := sort.Search(len(kids), func(i int) bool { return kids[i].info.Name >= name })
	if i < len(kids) && kids[i].info.Name == name {
		return kids[i], nil
	}
	return nil, fmt.Errorf("mount: %s: %w", path.Join(n.path, name), fs.ErrNotExist)
}

func sortNodes(ns []*Node) {
	sort.Slice(ns, func(i, j int) bool { return ns[i].info.Name < ns[j].info.Name })
}

// ---- root and VM directories (volatile) ----

type rootState struct {
	mu    sync.Mutex
	at    time.Time // last listing of the Source
	vms   map[string]*vmState
	names []string // sorted keys of vms
}

type rootOps struct{ rs *rootState }

// refresh lists the VMs again when the cached listing is older than maxAge.
// VM states are kept across refreshes, so their open recovery points stay.
func (rs *rootState) refresh(ctx context.Context, t *Tree, maxAge time.Duration) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !rs.at.IsZero() && time.Since(rs.at) < maxAge {
		return nil
	}
	vms, err := t.src.VMs(ctx)
	if err != nil {
		return fmt.Errorf("mount: list VMs: %w", err)
	}
	sort.Slice(vms, func(i, j int) bool {
		return vms[i].Name < vms[j].Name || vms[i].Name == vms[j].Name && vms[i].ID < vms[j].ID
	})
	seen := map[string]bool{}
	var names []string
	for _, vm := range vms {
		dn := safeDirName(vm.Name)
		if seen[dn] {
			// Two VMs with one name (a VM recreated with a new GUID):
			// the second gets its ID appended, deterministically.
			id := vm.ID
			if len(id) > 8 {
				id = id[:8]
			}
			dn = safeDirName(vm.Name + "~" + id)
		}
		if seen[dn] {
			t.logf("mount: skipping VM %q (%s): duplicate name", vm.Name, vm.ID)
			continue
		}
		seen[dn] = true
		names = append(names, dn)
		if st, ok := rs.vms[dn]; !ok || st.vm != vm {
			rs.vms[dn] = &vmState{vm: vm, rps: map[string]*rpState{}}
		}
	}
	for dn := range rs.vms {
		if !seen[dn] {
			delete(rs.vms, dn)
		}
	}
	sort.Strings(names)
	rs.names = names
	rs.at = time.Now()
	return nil
}

func (o rootOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	if err := o.rs.refresh(ctx, n.t, n.t.opts.Refresh); err != nil {
		return nil, err
	}
	o.rs.mu.Lock()
	defer o.rs.mu.Unlock()
	out := make([]*Node, 0, len(o.rs.names))
	for _, dn := range o.rs.names {
		out = append(out, o.vmNode(n, dn, o.rs.vms[dn]))
	}
	return out, nil
}

func (o rootOps) vmNode(n *Node, dn string, st *vmState) *Node {
	return n.child(dn, dirInfo(st.mtime(n.t)), true, vmOps{st})
}

func (o rootOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	for _, age := range []time.Duration{n.t.opts.Refresh, missRefresh} {
		if err := o.rs.refresh(ctx, n.t, age); err != nil {
			return nil, err
		}
		o.rs.mu.Lock()
		st, ok := o.rs.vms[name]
		o.rs.mu.Unlock()
		if ok {
			return o.vmNode(n, name, st), nil
		}
	}
	return nil, fmt.Errorf("mount: %s: %w", name, fs.ErrNotExist)
}

type vmState struct {
	vm     VM
	mu     sync.Mutex
	at     time.Time
	rps    map[string]*rpState
	ids    []string // sorted
	latest string
	newest time.Time
}

func (st *vmState) mtime(t *Tree) time.Time {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.newest.IsZero() {
		return t.start
	}
	return st.newest
}

func (st *vmState) refresh(ctx context.Context, t *Tree, dir string, maxAge time.Duration) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.at.IsZero() && time.Since(st.at) < maxAge {
		return nil
	}
	rps, err := t.src.RecoveryPoints(ctx, st.vm)
	if err != nil {
		return fmt.Errorf("mount: list recovery points of %s: %w", st.vm.Name, err)
	}
	seen := map[string]bool{}
	var ids []string
	var latest string
	var newest time.Time
	for _, rp := range rps {
		if !validName(rp.ID) || rp.ID == "latest" || seen[rp.ID] {
			t.logf("mount: %s: skipping recovery point with unusable ID %q", st.vm.Name, rp.ID)
			continue
		}
		seen[rp.ID] = true
		ids = append(ids, rp.ID)
		if _, ok := st.rps[rp.ID]; !ok {
			st.rps[rp.ID] = &rpState{t: t, vm: st.vm, rp: rp, path: dir + "/" + rp.ID}
		}
		if latest == "" || rp.Time.After(newest) || rp.Time.Equal(newest) && rp.ID > latest {
			latest, newest = rp.ID, rp.Time
		}
	}
	// Recovery points that vanished (forget/prune) leave the listing; an
	// open one keeps serving its open files until Tree.Close.
	for id := range st.rps {
		if !seen[id] {
			delete(st.rps, id)
		}
	}
	sort.Strings(ids)
	st.ids, st.latest, st.newest, st.at = ids, latest, newest, time.Now()
	return nil
}

type vmOps struct{ st *vmState }

type latestOps struct{ st *vmState }

func (o vmOps) list(ctx context.Context, n *Node) ([]*Node, error) {
	if err := o.st.refresh(ctx, n.t, n.path, n.t.opts.Refresh); err != nil {
		return nil, err
	}
	o.st.mu.Lock()
	defer o.st.mu.Unlock()
	out := make([]*Node, 0, len(o.st.ids)+1)
	for _, id := range o.st.ids {
		out = append(out, o.rpNode(n, o.st.rps[id]))
	}
	if o.st.latest != "" {
		out = append(out, o.latestNode(n, o.st.latest, o.st.newest))
	}
	sortNodes(out)
	return out, nil
}

// latestNode is the latest link to target. Its inode number depends on the
// target too: a link that points elsewhere is a new inode, as after
// `ln -sfn`. That is what lets FUSE adapters have the kernel cache link
// targets (a path through latest was one READLINK round trip per system
// call: 42,000 of them for a cp -a of 15,000 files): a moved latest is
// found under a new inode once its entry expires, and no cached target has
// to be invalidated.
func (o vmOps) latestNode(n *Node, target string, newest time.Time) *Node {
	l := n.child("latest", linkInfo(target, newest), true, latestOps{o.st})
	l.info.Ino = inoOf(l.path + "\x00" + target)
	return l
}

func (o vmOps) rpNode(n *Node, r *rpState) *Node {
	return n.child(r.rp.ID, dirInfo(r.rp.Time), false, rpOps{r})
}

// looksLikeRPID reports whether name has the form of a recovery point ID
// (YYYY-MM-DDTHHMMSSZ, optionally .N): only such a name is worth asking the
// Source again at once when it is not in the listing; file managers probe
// many other names (desktop.ini, .hidden, autorun.inf) all the time.
func looksLikeRPID(name string) bool {
	base, seq, _ := strings.Cut(name, ".")
	if _, err := time.Parse(RPIDLayout, base); err != nil {
		return false
	}
	for _, c := range seq {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func (o vmOps) lookup(ctx context.Context, n *Node, name string) (*Node, error) {
	miss := missRefresh
	if looksLikeRPID(name) || name == "latest" {
		miss = 0 // a recovery point committed a moment ago
	}
	for _, age := range []time.Duration{n.t.opts.Refresh, miss} {
		if err := o.st.refresh(ctx, n.t, n.path, age); err != nil {
			return nil, err
		}
		o.st.mu.Lock()
		r, ok := o.st.rps[name]
		latest, newest := o.st.latest, o.st.newest
		o.st.mu.Unlock()
		if ok {
			return o.rpNode(n, r), nil
		}
		if name == "latest" && latest != "" {
			return o.latestNode(n, latest, newest), nil
		}
	}
	return nil, fmt.Errorf("mount: %s/%s: %w", n.path, name, fs.ErrNotExist)
}

func (o vmOps) stat(ctx context.Context, n *Node) (guest.FileInfo, error) {
	if err := o.st.refresh(ctx, n.t, n.path, n.t.opts.Refresh); err != nil {
		return guest.FileInfo{}, err
	}
	fi := n.info
	fi.ModTime = o.st.mtime(n.t)
	return fi, nil
}

func (o latestOps) current(ctx context.Context, n *Node) (string, time.Time, error) {
	if err := o.st.refresh(ctx, n.t, path.Dir(n.path), n.t.opts.Refresh); err != nil {
		return "", time.Time{}, err
	}
	o.st.mu.Lock()
	defer o.st.mu.Unlock()
	if o.st.latest == "" {
		return "", time.Time{}, fmt.Errorf("mount: %s: %w", n.path, fs.ErrNotExist)
	}
	return o.st.latest, o.st.newest, nil
}

func (o latestOps) readlink(ctx context.Context, n *Node) (string, error) {
	target, _, err := o.current(ctx, n)
	return target, err
}

func (o latestOps) stat(ctx context.Context, n *Node) (guest.FileInfo, error) {
	target, mt, err := o.current(ctx, n)
	if err != nil {
		return guest.FileInfo{}, err
	}
	fi := linkInfo(target, mt)
	fi.Name, fi.Ino, fi.Nlink = n.info.Name, n.info.Ino, 1
	return fi, nil
}

// POSIX file type bits, spelled out so this package needs no syscall.
const (
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sISUID  = 0o4000
	sISGID  = 0o2000
	sISVTX  = 0o1000
	modePrm = 0o777
)

// UnixMode converts an fs.FileMode of the tree (directories, regular files
// and symlinks only) to a POSIX st_mode.
func UnixMode(m fs.FileMode) uint32 {
	u := uint32(m & modePrm)
	switch {
	case m.IsDir():
		u |= sIFDIR
	case m&fs.ModeSymlink != 0:
		u |= sIFLNK
	default:
		u |= sIFREG
	}
	if m&fs.ModeSetuid != 0 {
		u |= sISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= sISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= sISVTX
	}
	return u
}
