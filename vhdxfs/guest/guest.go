// Package guest reads the filesystem inside one guest partition (NTFS, ext2/3/4,
// FAT12/16/32) through a single read-only interface over an io.ReaderAt.
//
// Everything read from the partition is untrusted guest data. The package
// therefore:
//   - converts panics of the parsers into errors (see safe.go),
//   - bounds every allocation that depends on on-disk sizes (directory entries,
//     symlink targets, extent lists, cluster chains),
//   - never loops without a bound (FAT chains and ext4 extent trees are walked
//     with visit limits),
//   - never hands out a name a caller could use for path traversal: names that
//     are empty, "." or "..", longer than 1024 bytes, or contain '/' or NUL
//     are skipped (not escaped: an escaped name could collide with a real
//     one), and a second entry with the same name in one directory is
//     skipped too, so lookups are deterministic;
//   - refuses to walk through a directory that is its own ancestor (no
//     supported filesystem has directory hard links), so fs.WalkDir over a
//     damaged image terminates.
//
// Names are passed through as stored otherwise: ext4 names may be invalid
// UTF-8, and names legal on Linux but not on Windows (':', '\', trailing
// dots) are the mount layer's concern.
//
// Path semantics are io/fs semantics ("." is the root, "a/b", no leading
// slash). NTFS and FAT lookups fall back to a case-insensitive match, as in
// Windows; listings always show names as stored. Stat, ReadDir and Open never follow symlinks: Stat is lstat, and a
// symlink in the middle of a path is not a directory (fs.ErrNotExist). The FUSE
// mount resolves links itself through Readlink, exactly as a kernel does.
package guest

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrUnknownFS means no supported filesystem signature was found. It is not a
// failure for callers: the mount shows the raw volume instead.
var ErrUnknownFS = errors.New("guest: unknown filesystem")

// ErrCorrupt marks structural damage found while parsing guest metadata.
var ErrCorrupt = errors.New("guest: corrupt filesystem")

// Limits on what an untrusted image can make us allocate or walk.
const (
	// MaxDirEntries caps the entries returned for one directory. NTFS and
	// ext4 allow more in theory; a real guest directory beyond a million
	// entries is almost certainly damage or an attack.
	MaxDirEntries = 1 << 20
	// MaxSymlinkTarget is the longest symlink target we return (PATH_MAX).
	MaxSymlinkTarget = 4096
	// MaxDepth caps the number of path components a lookup walks.
	MaxDepth = 256
	// dirCacheEntries is the total number of directory entries kept in the
	// listing cache (~25 MiB at most). Recovery points are immutable, so
	// caching never goes stale. The most recent listing is kept even when
	// it alone is larger (WinSxS has ~80k entries), so a FUSE lookup of
	// every entry of a huge directory still costs one listing.
	dirCacheEntries = 1 << 17
)

// FileInfo describes one file. Use Info() where an fs.FileInfo is wanted (a
// Name() method would clash with the Name field).
type FileInfo struct {
	Name    string      // base name; "." for the root
	Size    int64       // bytes of the main data stream; symlinks: target length
	Mode    fs.FileMode // type bits (dir, symlink, ...) plus permission bits
	ModTime time.Time   // last modification (FAT: wall clock as stored, see fat.go)
	// Ino is stable for one image and identifies the file across hard links:
	// NTFS MFT record number, ext4 inode number, FAT first cluster (or a hash
	// of the directory entry position for empty files).
	Ino    uint64
	Nlink  uint32 // number of names; >1 for hard links
	Target string // symlink target (only for symlinks)
	Uid    uint32 // owner (ext4 only; 0 elsewhere)
	Gid    uint32 // group (ext4 only; 0 elsewhere)
}

// fileInfo adapts FileInfo to fs.FileInfo; FileInfo itself cannot have a
// Name() method because its field is called Name.
type fileInfo struct{ fi FileInfo }

func (f fileInfo) Name() string       { return f.fi.Name }
func (f fileInfo) Size() int64        { return f.fi.Size }
func (f fileInfo) Mode() fs.FileMode  { return f.fi.Mode }
func (f fileInfo) ModTime() time.Time { return f.fi.ModTime }
func (f fileInfo) IsDir() bool        { return f.fi.Mode.IsDir() }
func (f fileInfo) Sys() any           { return f.fi }

// Info returns an fs.FileInfo view of fi. Sys() returns the FileInfo.
func (fi FileInfo) Info() fs.FileInfo { return fileInfo{fi} }

// IsDir reports whether fi describes a directory.
func (fi FileInfo) IsDir() bool { return fi.Mode.IsDir() }

// FS is one mounted guest filesystem. All methods are safe for concurrent use.
type FS interface {
	// Type is "ntfs", "ext4" (also for ext2/ext3), "fat32", "fat16" or "fat12".
	Type() string
	// Label is the volume label, "" if none.
	Label() string
	// Stat describes name without following a final symlink.
	Stat(name string) (FileInfo, error)
	// ReadDir lists a directory sorted by name, without "." and "..".
	ReadDir(name string) ([]FileInfo, error)
	// Open opens a regular file for reading.
	Open(name string) (File, error)
	// Readlink returns a symlink's target.
	Readlink(name string) (string, error)
	Close() error
}

// File is an open regular file. ReadAt is safe for concurrent use and
// follows io.ReaderAt: a short read at the end of the file returns io.EOF.
type File interface {
	io.ReaderAt
	Size() int64
	Close() error
}

// Detect names the filesystem in the partition r of size bytes, or returns
// ErrUnknownFS.
func Detect(r io.ReaderAt, size int64) (string, error) {
	var boot [512]byte
	if size < int64(len(boot)) {
		return "", ErrUnknownFS
	}
	if _, err := r.ReadAt(boot[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("guest: read boot sector: %w", err)
	}
	if string(boot[3:11]) == "NTFS    " {
		return "ntfs", nil
	}
	// FAT before ext4: mke2fs zeroes sector 0, so a valid FAT boot sector
	// means FAT; but mkfs.fat on an old ext4 volume may leave the stale
	// ext4 superblock in its reserved sectors.
	if t, ok := detectFAT(boot[:]); ok {
		return t, nil
	}
	if size >= 2048 {
		var sb [2]byte
		if _, err := r.ReadAt(sb[:], 1024+0x38); err == nil && sb[0] == 0x53 && sb[1] == 0xEF {
			return "ext4", nil
		}
	}
	return "", ErrUnknownFS
}

// Open detects and opens the filesystem in the partition r of size bytes.
// Unknown filesystems give ErrUnknownFS.
func Open(r io.ReaderAt, size int64) (FS, error) {
	t, err := Detect(r, size)
	if err != nil {
		return nil, err
	}
	var b backend
	err = protect(t, "open", func() error {
		var err error
		switch t {
		case "ntfs":
			b, err = openNTFS(r, size)
		case "ext4":
			b, err = openExt4(r, size)
		default:
			b, err = openFAT(r, size)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return withExtents(newTree(b)), nil
}

// node is a filesystem object as a backend sees it: the public FileInfo plus
// one backend reference (MFT number, inode number, first cluster).
type node struct {
	info FileInfo
	ref  uint64
}

// backend is what each filesystem implements; tree adds paths, name
// sanitisation, caching and panic protection on top.
type backend interface {
	kind() string
	label() string
	root() (node, error)
	// list returns the raw entries of a directory; tree filters names.
	// Symlink entries carry their target in info.Target (capped).
	list(dir node) ([]node, error)
	// open returns a reader over a regular file's data.
	open(n node) (File, error)
	close() error
}

// tree implements FS over a backend.
type tree struct {
	b        backend
	rootNode node
	rootErr  error
	once     sync.Once

	mu    sync.Mutex
	cache map[uint64]*list.Element // dir ref -> cached listing
	lru   list.List
	total int
}

type dirListing struct {
	ref     uint64
	entries []node         // sorted by name
	byName  map[string]int // exact name -> index

	foldOnce sync.Once
	byFold   map[string]int // lower-cased name -> index (NTFS, FAT)
}

// lookup finds name in l: exactly, or for case-insensitive filesystems
// (NTFS, FAT: Windows hosts reach the mount with any case) ignoring case,
// where the first entry in sort order wins among case variants.
func (l *dirListing) lookup(name string, fold bool) (int, bool) {
	if i, ok := l.byName[name]; ok || !fold {
		return i, ok
	}
	l.foldOnce.Do(func() {
		l.byFold = make(map[string]int, len(l.entries))
		for i, e := range l.entries {
			k := strings.ToLower(e.info.Name)
			if _, dup := l.byFold[k]; !dup {
				l.byFold[k] = i
			}
		}
	})
	i, ok := l.byFold[strings.ToLower(name)]
	return i, ok
}

func newTree(b backend) *tree {
	return &tree{b: b, cache: make(map[uint64]*list.Element)}
}

func (t *tree) Type() string  { return t.b.kind() }
func (t *tree) Label() string { return t.b.label() }
func (t *tree) Close() error {
	t.mu.Lock()
	clear(t.cache)
	t.lru.Init()
	t.total = 0
	t.mu.Unlock()
	return t.b.close()
}

func (t *tree) root() (node, error) {
	t.once.Do(func() {
		t.rootErr = protect(t.b.kind(), ".", func() error {
			var err error
			t.rootNode, err = t.b.root()
			return err
		})
		t.rootNode.info.Name = "."
	})
	return t.rootNode, t.rootErr
}

// validName reports whether a name read from the image is safe to hand out.
func validName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 1024 {
		return false
	}
	return !strings.ContainsAny(name, "/\x00")
}

// listing returns the sanitised, sorted, cached entries of directory n.
func (t *tree) listing(n node, path string) (*dirListing, error) {
	t.mu.Lock()
	if el, ok := t.cache[n.ref]; ok {
		t.lru.MoveToFront(el)
		l := el.Value.(*dirListing)
		t.mu.Unlock()
		return l, nil
	}
	t.mu.Unlock()

	var raw []node
	err := protect(t.b.kind(), path, func() error {
		var err error
		raw, err = t.b.list(n)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxDirEntries {
		raw = raw[:MaxDirEntries]
	}
	// Sort indices, not the (large) node structs; ties keep on-disk order
	// so that among duplicate names the first one wins.
	idx := make([]int32, len(raw))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if c := strings.Compare(raw[a].info.Name, raw[b].info.Name); c != 0 {
			return c
		}
		return int(a - b)
	})
	l := &dirListing{ref: n.ref, entries: make([]node, 0, len(raw)), byName: make(map[string]int, len(raw))}
	for _, i := range idx {
		e := raw[i]
		if !validName(e.info.Name) {
			continue
		}
		if _, dup := l.byName[e.info.Name]; dup {
			continue
		}
		l.byName[e.info.Name] = len(l.entries)
		l.entries = append(l.entries, e)
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.cache[n.ref]; ok { // another goroutine won the race
		return el.Value.(*dirListing), nil
	}
	t.cache[n.ref] = t.lru.PushFront(l)
	t.total += len(l.entries) + 1
	for t.total > dirCacheEntries && t.lru.Len() > 1 {
		old := t.lru.Back()
		ol := old.Value.(*dirListing)
		t.lru.Remove(old)
		delete(t.cache, ol.ref)
		t.total -= len(ol.entries) + 1
	}
	return l, nil
}

// resolve walks name from the root without following symlinks.
func (t *tree) resolve(op, name string) (node, error) {
	if !fs.ValidPath(name) {
		return node{}, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	n, err := t.root()
	if err != nil {
		return node{}, &fs.PathError{Op: op, Path: name, Err: err}
	}
	if name == "." {
		return n, nil
	}
	parts := strings.Split(name, "/")
	if len(parts) > MaxDepth {
		return node{}, &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("guest: path deeper than %d: %w", MaxDepth, fs.ErrInvalid)}
	}
	refs := make([]uint64, 0, len(parts))
	for i, p := range parts {
		if !n.info.Mode.IsDir() {
			return node{}, &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("guest: %q is not a directory: %w", strings.Join(parts[:i], "/"), fs.ErrNotExist)}
		}
		l, err := t.listing(n, strings.Join(parts[:i], "/"))
		if err != nil {
			return node{}, &fs.PathError{Op: op, Path: name, Err: err}
		}
		idx, ok := l.lookup(p, t.b.kind() != "ext4")
		if !ok {
			return node{}, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}
		refs = append(refs, n.ref)
		n = l.entries[idx]
		// None of these filesystems allows directory hard links, so a
		// directory that is its own ancestor is damage. Refusing to go
		// through it keeps fs.WalkDir finite: two such entries per level
		// would otherwise give 2^MaxDepth paths.
		if n.info.Mode.IsDir() && slices.Contains(refs, n.ref) {
			return node{}, &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("guest: directory cycle at %q: %w", strings.Join(parts[:i+1], "/"), ErrCorrupt)}
		}
	}
	return n, nil
}

func (t *tree) Stat(name string) (FileInfo, error) {
	n, err := t.resolve("stat", name)
	if err != nil {
		return FileInfo{}, err
	}
	return n.info, nil
}

func (t *tree) ReadDir(name string) ([]FileInfo, error) {
	n, err := t.resolve("readdir", name)
	if err != nil {
		return nil, err
	}
	if !n.info.Mode.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("guest: not a directory")}
	}
	l, err := t.listing(n, name)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	out := make([]FileInfo, len(l.entries))
	for i, e := range l.entries {
		out[i] = e.info
	}
	return out, nil
}

func (t *tree) Open(name string) (File, error) {
	n, err := t.resolve("open", name)
	if err != nil {
		return nil, err
	}
	if !n.info.Mode.IsRegular() {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("guest: not a regular file (%v): %w", n.info.Mode.Type(), fs.ErrInvalid)}
	}
	var f File
	err = protect(t.b.kind(), name, func() error {
		var err error
		f, err = t.b.open(n)
		return err
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &safeFile{f: f, kind: t.b.kind(), name: name}, nil
}

func (t *tree) Readlink(name string) (string, error) {
	n, err := t.resolve("readlink", name)
	if err != nil {
		return "", err
	}
	if n.info.Mode&fs.ModeSymlink == 0 {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fmt.Errorf("guest: not a symlink: %w", fs.ErrInvalid)}
	}
	if n.info.Target == "" {
		// The target could not be read or exceeded MaxSymlinkTarget.
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fmt.Errorf("guest: unreadable symlink target: %w", ErrCorrupt)}
	}
	return n.info.Target, nil
}
