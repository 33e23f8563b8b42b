package guest

// ext2/3/4 reader, written here. github.com/masahiro331/go-ext4-filesystem
// (in go.mod) was evaluated and not used because, for a FUSE backend over
// untrusted images:
//   - File.Read seeks the filesystem's one shared io.SectionReader, so two
//     files (or two readers of one file) read concurrently corrupt each
//     other; there is no ReadAt;
//   - every path lookup lists the whole parent directory and reads every
//     entry's inode, per component;
//   - Open and Stat follow symlinks (ReadLink is resolved against the base
//     name, and filepath.Clean rewrites targets), so lstat semantics and
//     exact targets are impossible;
//   - FileInfo hides the inode number, link count, uid/gid, and mtimes have
//     second resolution;
//   - a file's block table is a map with one entry per 4 KiB block (a
//     3 GiB file costs ~800k map entries), the fast-symlink path slices
//     i_block[:size] without a bound check, and the extent tree fan-out is
//     unbounded.
// What this reader covers: superblock, 32/64-byte group descriptors, inodes
// with nanosecond mtimes, extent trees (depth-checked, visit-capped),
// ext2/3 block maps, linear and HTree directories (HTree blocks parse as
// linear blocks with empty index entries), inline data up to 60 bytes, fast
// and slow symlinks. A file's run table is built once per Open, so ReadAt is
// lock-free. Not supported: meta_bg groups past s_first_meta_bg, inline data
// beyond i_block (system.data xattr), encrypted names (shown as raw bytes).

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"time"
)

const (
	ext4MaxRuns     = 1 << 21  // runs in one file's table (~48 MiB of runs)
	ext4MaxTreeRead = 1 << 16  // extent/indirect blocks read for one file
	ext4MaxDirBytes = 64 << 20 // directory data read for one listing

	ext4FlagIndex   = 0x1000
	ext4FlagExtents = 0x80000
	ext4FlagInline  = 0x10000000

	ext4IncompatMetaBG = 0x10
	ext4Incompat64bit  = 0x80
)

type ext4FS struct {
	r           io.ReaderAt
	bs          int64
	inodeSize   int64
	ipg         uint32
	inodes      uint32
	groups      uint32
	gdtOff      int64
	descSize    int64
	is64        bool
	firstMetaBG uint32
	metaBG      bool
	lbl         string
	size        int64 // partition bytes

	// cache holds metadata blocks (group descriptors, inode tables):
	// listing a directory reads many inodes from the same few blocks.
	mu    sync.Mutex
	cache map[int64][]byte
}

// ext4CacheBytes bounds the metadata cache (whatever the block size).
const ext4CacheBytes = 16 << 20

// metaBlock returns block blk through the metadata cache. The returned slice
// is shared and must not be modified.
func (e *ext4FS) metaBlock(blk int64) ([]byte, error) {
	e.mu.Lock()
	b, ok := e.cache[blk]
	e.mu.Unlock()
	if ok {
		return b, nil
	}
	b = make([]byte, e.bs)
	if _, err := e.r.ReadAt(b, blk*e.bs); err != nil {
		return nil, fmt.Errorf("guest: ext4: read block %d: %w", blk, err)
	}
	e.mu.Lock()
	if int64(len(e.cache))*e.bs >= ext4CacheBytes {
		clear(e.cache) // crude, but bounded and rare
	}
	e.cache[blk] = b
	e.mu.Unlock()
	return b, nil
}

// metaRead copies n bytes at byte offset off through the block cache.
func (e *ext4FS) metaRead(off, n int64) ([]byte, error) {
	out := make([]byte, 0, n)
	for n > 0 {
		if off < 0 {
			return nil, fmt.Errorf("guest: ext4: negative offset: %w", ErrCorrupt)
		}
		b, err := e.metaBlock(off / e.bs)
		if err != nil {
			return nil, err
		}
		k := min(n, e.bs-off%e.bs)
		out = append(out, b[off%e.bs:off%e.bs+k]...)
		off += k
		n -= k
	}
	return out, nil
}

type ext4Inode struct {
	mode  uint16
	uid   uint32
	gid   uint32
	size  int64
	mtime time.Time
	links uint16
	flags uint32
	block [60]byte
}

func openExt4(r io.ReaderAt, size int64) (backend, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return nil, fmt.Errorf("guest: ext4: read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return nil, ErrUnknownFS
	}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 {
		return nil, fmt.Errorf("guest: ext4: block size 2^%d KiB: %w", logBS, ErrCorrupt)
	}
	e := &ext4FS{r: r, bs: 1024 << logBS, size: size, cache: make(map[int64][]byte)}
	e.inodes = le.Uint32(sb[0:])
	e.ipg = le.Uint32(sb[0x28:])
	bpg := le.Uint32(sb[0x20:])
	firstData := le.Uint32(sb[0x14:])
	incompat := le.Uint32(sb[0x60:])
	e.is64 = incompat&ext4Incompat64bit != 0
	blocks := uint64(le.Uint32(sb[4:]))
	if e.is64 {
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	e.inodeSize = 128
	if le.Uint32(sb[0x4C:]) >= 1 {
		e.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	if e.ipg == 0 || bpg == 0 || e.inodes == 0 || e.inodeSize < 128 || e.inodeSize > e.bs || e.inodeSize&(e.inodeSize-1) != 0 || blocks <= uint64(firstData) {
		return nil, fmt.Errorf("guest: ext4: implausible superblock: %w", ErrCorrupt)
	}
	e.groups = uint32(min((blocks-uint64(firstData)+uint64(bpg)-1)/uint64(bpg), 1<<32-1))
	e.descSize = 32
	if e.is64 {
		e.descSize = int64(le.Uint16(sb[0xFE:]))
		if e.descSize < 32 || e.descSize > 1024 || e.descSize&(e.descSize-1) != 0 {
			return nil, fmt.Errorf("guest: ext4: descriptor size %d: %w", e.descSize, ErrCorrupt)
		}
	}
	e.gdtOff = (int64(firstData) + 1) * e.bs
	if incompat&ext4IncompatMetaBG != 0 {
		e.metaBG = true
		e.firstMetaBG = le.Uint32(sb[0x104:])
	}
	e.lbl = strings.TrimRight(string(sb[0x78:0x88]), "\x00")
	return e, nil
}

func (e *ext4FS) kind() string  { return "ext4" }
func (e *ext4FS) label() string { return e.lbl }
func (e *ext4FS) close() error  { return nil }

// inodeTable returns the block of group g's inode table.
func (e *ext4FS) inodeTable(g uint32) (int64, error) {
	descPerBlock := e.bs / e.descSize
	if e.metaBG && int64(g)/descPerBlock >= int64(e.firstMetaBG) {
		// meta_bg places each descriptor block inside its own meta group;
		// not produced by mkfs.ext4 defaults and not supported here.
		return 0, fmt.Errorf("guest: ext4: meta_bg group %d not supported", g)
	}
	d, err := e.metaRead(e.gdtOff+int64(g)*e.descSize, e.descSize)
	if err != nil {
		return 0, fmt.Errorf("guest: ext4: group descriptor %d: %w", g, err)
	}
	t := int64(binary.LittleEndian.Uint32(d[8:]))
	if e.is64 && e.descSize >= 64 {
		t |= int64(binary.LittleEndian.Uint32(d[0x28:])) << 32
	}
	return t, nil
}

func (e *ext4FS) readInode(ino uint64) (*ext4Inode, error) {
	if ino < 1 || ino > uint64(e.inodes) {
		return nil, fmt.Errorf("guest: ext4: inode %d out of range: %w", ino, ErrCorrupt)
	}
	g := uint32((ino - 1) / uint64(e.ipg))
	if g >= e.groups {
		return nil, fmt.Errorf("guest: ext4: inode %d beyond last group: %w", ino, ErrCorrupt)
	}
	tbl, err := e.inodeTable(g)
	if err != nil {
		return nil, err
	}
	idx := int64((ino - 1) % uint64(e.ipg))
	b, err := e.metaRead(tbl*e.bs+idx*e.inodeSize, min(e.inodeSize, 256))
	if err != nil {
		return nil, fmt.Errorf("guest: ext4: inode %d: %w", ino, err)
	}
	le := binary.LittleEndian
	in := &ext4Inode{
		mode:  le.Uint16(b[0:]),
		uid:   uint32(le.Uint16(b[2:])) | uint32(le.Uint16(b[0x78:]))<<16,
		gid:   uint32(le.Uint16(b[0x18:])) | uint32(le.Uint16(b[0x7A:]))<<16,
		size:  int64(uint64(le.Uint32(b[4:])) | uint64(le.Uint32(b[0x6C:]))<<32),
		links: le.Uint16(b[0x1A:]),
		flags: le.Uint32(b[0x20:]),
	}
	if in.size < 0 {
		return nil, fmt.Errorf("guest: ext4: inode %d has negative size: %w", ino, ErrCorrupt)
	}
	copy(in.block[:], b[0x28:0x64])
	sec := int64(int32(le.Uint32(b[0x10:])))
	var nsec int64
	if len(b) > 128 && le.Uint16(b[0x80:]) >= 12 {
		extra := le.Uint32(b[0x88:])
		sec += int64(extra&3) << 32
		nsec = int64(extra >> 2)
		if nsec > 999999999 {
			nsec = 0
		}
	}
	in.mtime = time.Unix(sec, nsec).UTC()
	return in, nil
}

func ext4Mode(m uint16) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	switch m & 0xF000 {
	case 0x8000:
	case 0x4000:
		mode |= fs.ModeDir
	case 0xA000:
		mode |= fs.ModeSymlink
	case 0xC000:
		mode |= fs.ModeSocket
	case 0x6000:
		mode |= fs.ModeDevice
	case 0x2000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0x1000:
		mode |= fs.ModeNamedPipe
	default:
		mode |= fs.ModeIrregular
	}
	return mode
}

func (e *ext4FS) nodeFor(ino uint64, name string) (node, *ext4Inode, error) {
	in, err := e.readInode(ino)
	if err != nil {
		return node{}, nil, err
	}
	n := node{ref: ino, info: FileInfo{
		Name:    name,
		Size:    in.size,
		Mode:    ext4Mode(in.mode),
		ModTime: in.mtime,
		Ino:     ino,
		Nlink:   uint32(in.links),
		Uid:     in.uid,
		Gid:     in.gid,
	}}
	if n.info.Mode.IsDir() {
		n.info.Size = 0
	}
	return n, in, nil
}

func (e *ext4FS) root() (node, error) {
	n, in, err := e.nodeFor(2, ".")
	if err != nil {
		return node{}, err
	}
	if in.mode&0xF000 != 0x4000 {
		return node{}, fmt.Errorf("guest: ext4: root inode is not a directory: %w", ErrCorrupt)
	}
	return n, nil
}

// runs builds the file-offset -> disk-offset table of an inode.
func (e *ext4FS) runs(in *ext4Inode) ([]fatRun, error) {
	var runs []fatRun
	var err error
	if in.flags&ext4FlagExtents != 0 {
		reads := 0
		runs, err = e.extentRuns(in.block[:], -1, &reads, runs, in.size)
	} else {
		runs, err = e.blockMapRuns(in)
	}
	if err != nil {
		return nil, err
	}
	// Sort and drop overlaps, so a hostile tree cannot make two runs claim
	// one offset (sort.Search in readRuns needs a clean table).
	sort.Slice(runs, func(i, j int) bool { return runs[i].off < runs[j].off })
	out := runs[:0]
	var end int64
	for _, r := range runs {
		if r.off < end {
			continue
		}
		out = append(out, r)
		end = r.off + r.len
	}
	return out, nil
}

func (e *ext4FS) extentRuns(b []byte, depth int, reads *int, runs []fatRun, size int64) ([]fatRun, error) {
	le := binary.LittleEndian
	if len(b) < 12 || le.Uint16(b[0:]) != 0xF30A {
		return runs, fmt.Errorf("guest: ext4: bad extent header: %w", ErrCorrupt)
	}
	entries := int(le.Uint16(b[2:]))
	d := int(le.Uint16(b[6:]))
	if d > 5 || (depth >= 0 && d != depth) || 12+entries*12 > len(b) {
		return runs, fmt.Errorf("guest: ext4: bad extent node (depth %d, %d entries): %w", d, entries, ErrCorrupt)
	}
	for i := 0; i < entries; i++ {
		x := b[12+i*12:]
		lblk := int64(le.Uint32(x[0:]))
		if d == 0 {
			l := int64(le.Uint16(x[4:]))
			disk := int64(le.Uint16(x[6:]))<<32 | int64(le.Uint32(x[8:]))
			unwritten := l > 32768
			if unwritten {
				l -= 32768
			}
			r := fatRun{off: lblk * e.bs, disk: disk * e.bs, len: l * e.bs}
			if unwritten {
				r.disk = -1
			}
			if r.off >= size || l == 0 {
				continue
			}
			r.len = min(r.len, size-r.off)
			if len(runs) >= ext4MaxRuns {
				return runs, fmt.Errorf("guest: ext4: more than %d extents: %w", ext4MaxRuns, ErrCorrupt)
			}
			runs = append(runs, r)
			continue
		}
		if lblk*e.bs >= size {
			continue
		}
		*reads++
		if *reads > ext4MaxTreeRead {
			return runs, fmt.Errorf("guest: ext4: extent tree too large: %w", ErrCorrupt)
		}
		child := int64(le.Uint16(x[8:]))<<32 | int64(le.Uint32(x[4:]))
		blk := make([]byte, e.bs)
		if _, err := e.r.ReadAt(blk, child*e.bs); err != nil {
			return runs, fmt.Errorf("guest: ext4: read extent block: %w", err)
		}
		var err error
		if runs, err = e.extentRuns(blk, d-1, reads, runs, size); err != nil {
			return runs, err
		}
	}
	return runs, nil
}

// blockMapRuns handles ext2/ext3 style direct/indirect block maps.
func (e *ext4FS) blockMapRuns(in *ext4Inode) ([]fatRun, error) {
	nblocks := (in.size + e.bs - 1) / e.bs
	var runs []fatRun
	reads := 0
	add := func(lblk int64, pblk uint32) error {
		if pblk == 0 || lblk >= nblocks {
			return nil
		}
		off, disk := lblk*e.bs, int64(pblk)*e.bs
		if n := len(runs); n > 0 && runs[n-1].off+runs[n-1].len == off && runs[n-1].disk+runs[n-1].len == disk {
			runs[n-1].len += e.bs
			return nil
		}
		if len(runs) >= ext4MaxRuns {
			return fmt.Errorf("guest: ext4: more than %d block runs: %w", ext4MaxRuns, ErrCorrupt)
		}
		runs = append(runs, fatRun{off: off, disk: disk, len: e.bs})
		return nil
	}
	per := e.bs / 4
	var walk func(pblk uint32, level int, first int64) error
	walk = func(pblk uint32, level int, first int64) error {
		if pblk == 0 || first >= nblocks {
			return nil
		}
		reads++
		if reads > ext4MaxTreeRead*16 {
			return fmt.Errorf("guest: ext4: block map too large: %w", ErrCorrupt)
		}
		blk := make([]byte, e.bs)
		if _, err := e.r.ReadAt(blk, int64(pblk)*e.bs); err != nil {
			return fmt.Errorf("guest: ext4: read indirect block: %w", err)
		}
		span := int64(1)
		for i := 1; i < level; i++ {
			span *= per
		}
		for i := int64(0); i < per; i++ {
			p := binary.LittleEndian.Uint32(blk[i*4:])
			var err error
			if level == 1 {
				err = add(first+i, p)
			} else {
				err = walk(p, level-1, first+i*span)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	for i := int64(0); i < 12; i++ {
		if err := add(i, binary.LittleEndian.Uint32(in.block[i*4:])); err != nil {
			return nil, err
		}
	}
	first := int64(12)
	for level := 1; level <= 3; level++ {
		if err := walk(binary.LittleEndian.Uint32(in.block[(11+level)*4:]), level, first); err != nil {
			return nil, err
		}
		span := int64(1)
		for i := 0; i < level; i++ {
			span *= per
		}
		first += span
	}
	for i := range runs {
		runs[i].len = min(runs[i].len, in.size-runs[i].off)
	}
	return runs, nil
}

// data returns up to max bytes of an inode's contents.
func (e *ext4FS) data(in *ext4Inode, max int64) ([]byte, error) {
	n := min(in.size, max)
	if in.flags&ext4FlagInline != 0 {
		// Inline data: the first 60 bytes live in i_block; the rest would
		// be in the system.data xattr, which we do not read.
		if n > 60 {
			return nil, fmt.Errorf("guest: ext4: inline data beyond 60 bytes not supported")
		}
		return append([]byte(nil), in.block[:n]...), nil
	}
	runs, err := e.runs(in)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := readRuns(e.r, runs, true, b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

func (e *ext4FS) symlinkTarget(in *ext4Inode) (string, error) {
	if in.size > MaxSymlinkTarget {
		return "", fmt.Errorf("guest: ext4: symlink target of %d bytes: %w", in.size, ErrCorrupt)
	}
	var b []byte
	if in.size < 60 && in.flags&(ext4FlagExtents|ext4FlagInline) == 0 {
		b = in.block[:in.size] // fast symlink: target stored in i_block
	} else {
		var err error
		if b, err = e.data(in, in.size); err != nil {
			return "", err
		}
	}
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b), nil
}

func (e *ext4FS) list(dir node) ([]node, error) {
	in, err := e.readInode(dir.ref)
	if err != nil {
		return nil, err
	}
	var blocks []byte
	bs := e.bs
	if in.flags&ext4FlagInline != 0 {
		// Inline directory: 4 bytes of parent inode, then entries.
		blocks, bs = in.block[4:], 56
	} else {
		// A directory cannot hold more data than the partition.
		if blocks, err = e.data(in, min(ext4MaxDirBytes, e.size)); err != nil {
			return nil, err
		}
	}
	var out []node
	le := binary.LittleEndian
	for base := int64(0); base+bs <= int64(len(blocks)); base += bs {
		blk := blocks[base : base+bs]
		for pos := int64(0); pos+8 <= bs; {
			ino := le.Uint32(blk[pos:])
			rl := int64(le.Uint16(blk[pos+4:]))
			if bs >= 65536 && (rl == 65535 || rl == 0) {
				rl = bs
			} else if bs >= 65536 {
				rl = rl&0xFFFC | (rl&3)<<16
			}
			nl := int64(blk[pos+6])
			if rl < 8 || rl%4 != 0 || pos+rl > bs {
				break // damaged block: keep what we have, try the next one
			}
			if ino != 0 && nl > 0 && 8+nl <= rl {
				name := string(blk[pos+8 : pos+8+nl])
				if name != "." && name != ".." {
					if len(out) >= MaxDirEntries {
						return out, nil
					}
					n, cin, err := e.nodeFor(uint64(ino), name)
					if err == nil {
						if n.info.Mode&fs.ModeSymlink != 0 {
							n.info.Target, _ = e.symlinkTarget(cin)
						}
						out = append(out, n)
					}
				}
			}
			pos += rl
		}
	}
	return out, nil
}

func (e *ext4FS) open(n node) (File, error) {
	in, err := e.readInode(n.ref)
	if err != nil {
		return nil, err
	}
	if in.flags&ext4FlagInline != 0 {
		b, err := e.data(in, in.size)
		if err != nil {
			return nil, err
		}
		return &memFile{b: b}, nil
	}
	runs, err := e.runs(in)
	if err != nil {
		return nil, err
	}
	return &ext4File{r: e.r, size: in.size, runs: runs}, nil
}

type ext4File struct {
	r    io.ReaderAt
	size int64
	runs []fatRun
}

func (f *ext4File) Size() int64  { return f.size }
func (f *ext4File) Close() error { return nil }
func (f *ext4File) ReadAt(p []byte, off int64) (int, error) {
	return readRuns(f.r, f.runs, true, p, off)
}

// memFile serves small files already read into memory.
type memFile struct{ b []byte }

func (m *memFile) Size() int64  { return int64(len(m.b)) }
func (m *memFile) Close() error { return nil }
func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
