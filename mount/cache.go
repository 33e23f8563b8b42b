package mount

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// blockCache is the bounded LRU of decoded disk data shared by every open
// file of a tree: .raw, .vhdx, volume.img and guest files all end up reading
// aligned blocks of some disk through it, so a block decoded for one reader
// (or by read-ahead) serves all of them.
//
// Blocks are reference counted (see block) so that their buffers can be
// recycled instead of allocated and cleared for every fill, and so that a
// FUSE reply can be written straight out of a cached block (a loan) while
// the block is evicted under it.
//
// It is split into shards, each with its own mutex, so concurrent readers of
// different blocks rarely meet; get-or-compute runs the fill outside the
// lock and makes concurrent misses on one block wait for a single fill.
type blockCache struct {
	blockSize int64
	nshards   uint64
	shards    [maxCacheShards]cacheShard
	pool      blockPool
	// zeros is lent out for holes: read-only, never recycled.
	zeros []byte
}

// maxCacheShards bounds the shards; fewer are used when the budget would
// give a shard room for less than minShardBlocks blocks (a block larger
// than its shard's budget could never be cached).
const (
	maxCacheShards = 16
	minShardBlocks = 8
)

type cacheKey struct {
	disk  uint64 // Tree.cacheID of the disk or file
	block int64  // block index
}

type cacheShard struct {
	mu       sync.Mutex
	max      int64
	size     int64
	ll       list.List
	m        map[cacheKey]*list.Element
	inflight map[cacheKey]*cacheFill
}

type cacheItem struct {
	k cacheKey
	b *block
}

type cacheFill struct {
	done chan struct{}
	b    *block
	err  error
	// waiters counts the readers waiting for this fill (under the shard
	// lock); the filler takes a reference for each before it wakes them,
	// so none of them can find the buffer already recycled.
	waiters int32
}

// block is one decoded block. refs counts the cache's reference (while the
// block is cached) and one per reader holding it (copying out of it, or
// lending it to a FUSE reply until the reply is written). The buffer goes
// back to the pool when the count drops to zero, and not before: a buffer
// refilled while a reply still points into it would send another block's
// bytes.
type block struct {
	data []byte
	refs atomic.Int32
	pool *blockPool // nil: not recycled (a short tail block)
}

func (b *block) acquire() { b.refs.Add(1) }

func (b *block) release() {
	switch r := b.refs.Add(-1); {
	case r == 0:
		if b.pool != nil {
			b.pool.put(b.data)
		}
		b.data = nil // a use after the last release faults instead of reading a recycled buffer
	case r < 0:
		panic("mount: cache block released more often than acquired")
	}
}

// blockPool recycles full-size block buffers. A fill would otherwise
// allocate 1 MiB, which the runtime clears, and the GC would then collect
// it again: at 1 GB/s of sequential reads that was a tenth of the mount's
// CPU. The free list is small and bounded (it only bridges the eviction of
// one block and the fill of the next), so it adds little to the memory the
// cache is allowed.
type blockPool struct {
	size int
	free chan []byte
}

// poolBlocks bounds the free list.
const poolBlocks = 8

// get returns a buffer of n bytes with undefined contents (the fill
// overwrites all of it) and whether it may go back to the pool.
func (p *blockPool) get(n int) ([]byte, bool) {
	if n != p.size {
		return make([]byte, n), false
	}
	select {
	case b := <-p.free:
		return b, true
	default:
		return make([]byte, n), true
	}
}

func (p *blockPool) put(b []byte) {
	if len(b) != p.size {
		return
	}
	select {
	case p.free <- b:
	default: // full: the GC takes it
	}
}

func newBlockCache(maxBytes, blockSize int64) *blockCache {
	n := min(max(maxBytes/(minShardBlocks*blockSize), 1), maxCacheShards)
	c := &blockCache{blockSize: blockSize, nshards: uint64(n),
		pool:  blockPool{size: int(blockSize), free: make(chan []byte, poolBlocks)},
		zeros: make([]byte, blockSize)}
	per := maxBytes / n
	for i := range c.shards[:n] {
		s := &c.shards[i]
		s.max = per
		s.m = make(map[cacheKey]*list.Element)
		s.inflight = make(map[cacheKey]*cacheFill)
	}
	return c
}

func (c *blockCache) shard(k cacheKey) *cacheShard {
	h := k.disk*0x9E3779B97F4A7C15 ^ uint64(k.block)*0xC2B2AE3D27D4EB4F
	return &c.shards[(h>>32)%c.nshards]
}

// get returns the block for k with a reference the caller must release,
// calling fill (with a buffer of n bytes to fill completely) at most once
// for concurrent misses. Failed fills are not cached: a damaged chunk is
// retried (and reported) on every read.
func (c *blockCache) get(k cacheKey, n int64, fill func(p []byte) error) (*block, error) {
	s := c.shard(k)
	s.mu.Lock()
	if e, ok := s.m[k]; ok {
		s.ll.MoveToFront(e)
		b := e.Value.(*cacheItem).b
		b.acquire()
		s.mu.Unlock()
		return b, nil
	}
	if f, ok := s.inflight[k]; ok {
		f.waiters++
		s.mu.Unlock()
		<-f.done
		return f.b, f.err // the filler took our reference
	}
	f := &cacheFill{done: make(chan struct{})}
	s.inflight[k] = f
	s.mu.Unlock()

	buf, pooled := c.pool.get(int(n))
	var b *block
	err := fill(buf)
	if err != nil {
		if pooled {
			c.pool.put(buf)
		}
	} else {
		b = &block{data: buf}
		if pooled {
			b.pool = &c.pool
		}
		b.refs.Store(1) // ours
	}

	s.mu.Lock()
	delete(s.inflight, k) // no new waiters from here on
	if b != nil {
		b.refs.Add(f.waiters)
		if n <= s.max {
			b.acquire() // the cache's
			s.m[k] = s.ll.PushFront(&cacheItem{k: k, b: b})
			s.size += n
			for s.size > s.max {
				old := s.ll.Back()
				it := old.Value.(*cacheItem)
				s.ll.Remove(old)
				delete(s.m, it.k)
				s.size -= int64(len(it.b.data))
				it.b.release()
			}
		}
	}
	f.b, f.err = b, err
	s.mu.Unlock()
	close(f.done)
	return b, err
}

// peek returns the block for k with a reference the caller must release
// if it is cached, and nil (without filling it) otherwise.
func (c *blockCache) peek(k cacheKey) *block {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[k]
	if !ok {
		return nil
	}
	s.ll.MoveToFront(e)
	b := e.Value.(*cacheItem).b
	b.acquire()
	return b
}

// has reports whether k is cached or being filled.
func (c *blockCache) has(k cacheKey) bool {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[k]
	_, fl := s.inflight[k]
	return ok || fl
}

// loan is bytes lent out of the cache instead of copied: bufs are
// read-only and stay valid until release, which drops the references that
// keep their blocks from being recycled.
type loan struct {
	bufs   [][]byte
	blocks []*block
}

func (l *loan) release() {
	for _, b := range l.blocks {
		b.release()
	}
	l.bufs, l.blocks = nil, nil
}

// cachedDisk is a vdisk.Disk that reads through the shared block cache.
// Ranges outside the allocation map are zeros by contract and never touch
// the cache or the source; the allocation table is sorted and immutable, so
// finding a range is a lock-free binary search.
type cachedDisk struct {
	src   vdisk.Disk
	c     *blockCache
	id    uint64
	size  int64
	alloc []vdisk.Extent
	// t, when set, enables block read-ahead: entering the block after the
	// previously entered one fetches the next blocks in the background, in
	// parallel. That is what hides a source's latency, whoever reads (a
	// .raw, the .vhdx view, a guest filesystem whose file blocks straddle
	// disk blocks).
	t         *Tree
	lastBlock atomic.Int64
}

var _ vdisk.Disk = (*cachedDisk)(nil)

func newCachedDisk(src vdisk.Disk, c *blockCache, id uint64) *cachedDisk {
	d := &cachedDisk{src: src, c: c, id: id, size: src.Size(),
		alloc: vdisk.NormalizeExtents(src.Allocated(), src.Size())}
	d.lastBlock.Store(-2)
	return d
}

func (d *cachedDisk) Size() int64               { return d.size }
func (d *cachedDisk) Identity() vdisk.Identity  { return d.src.Identity() }
func (d *cachedDisk) Allocated() []vdisk.Extent { return d.alloc }

// Close does nothing: the tree owns and closes the source disk.
func (d *cachedDisk) Close() error { return nil }

// allocated reports whether [off, end) intersects the allocation map.
func (d *cachedDisk) allocated(off, end int64) bool {
	i := sort.Search(len(d.alloc), func(i int) bool { return d.alloc[i].End() > off })
	return i < len(d.alloc) && d.alloc[i].Off < end
}

// ReadAt follows io.ReaderAt. A block that cannot be filled (a damaged
// chunk somewhere in it) is not an error by itself: the requested bytes are
// then read directly, so only reads that really touch the bad range fail.
func (d *cachedDisk) ReadAt(p []byte, off int64) (int, error) {
	return d.readAt(p, off, true)
}

// readAt is ReadAt; ahead false never starts read-ahead (see volumeDisk).
func (d *cachedDisk) readAt(p []byte, off int64, ahead bool) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("mount: read at negative offset %d", off)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	var eof error
	if rem := d.size - off; int64(len(p)) > rem {
		p = p[:rem]
		eof = io.EOF
	}
	bs := d.c.blockSize
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b := pos / bs
		bOff := b * bs
		bEnd := min(bOff+bs, d.size)
		m := min(int64(len(p)-n), bEnd-pos)
		dst := p[n : n+int(m)]
		if !d.allocated(pos, pos+m) {
			clear(dst)
			n += int(m)
			continue
		}
		if d.bypass(b, bOff, bEnd, m, ahead) {
			// A small read that jumped, into a block much larger than
			// itself: random access (fio, a database file, filesystem
			// metadata). (A small file is one small block: filling it is
			// the read, and the handle's read-ahead then finds it cached
			// instead of reading the file a second time.) Filling the whole block would
			// decode ~16x the bytes asked for; the store's frame cache
			// keeps what such a read decodes (one or two 64 KiB frames).
			// A reader that stays in this block fills it on its next read.
			if err := readFull(d.src, dst, pos); err != nil {
				return n, err
			}
			n += int(m)
			continue
		}
		blk, err := d.block(b)
		if err != nil {
			if err := readFull(d.src, dst, pos); err != nil {
				return n, err
			}
		} else {
			copy(dst, blk.data[pos-bOff:])
			blk.release()
		}
		n += int(m)
	}
	return n, eof
}

// volumeDisk is the disk as the guest filesystems see it. Their reads
// come in two kinds:
//   - big ones (>= bigRead) are a guest file's block being filled by the
//     tree's file-level cache, which keeps the result itself, so a second
//     copy in the disk's blocks would only cost an allocation and a copy
//     per byte and evict other data: they are read directly;
//   - small ones are metadata (go-ntfs's 64 KiB pages, ext4 and FAT
//     blocks) and the data of small files. A small read that continues the
//     previous one exactly (a scan of the MFT, an inode table, a file
//     whose runs follow each other) goes through the block cache, which
//     then holds what the scan reads next; one that jumps is served from a
//     cached block when there is one and is otherwise read directly. A
//     folder of small files is read in name order while NTFS laid it out
//     in creation order: filling a 1 MiB block for every jump decoded 3.5x
//     the bytes a `cp -a` of 15,000 files asked for, the blocks being
//     evicted before their neighbours were read. Direct reads decode only
//     the store's 64 KiB frames they touch, and the store's frame cache
//     keeps partly read ones for the neighbours.
//
// There is no disk read-ahead for volumes: the guest filesystem's small
// reads hop around the volume, and 8 MiB fetched after each "sequential"
// pair was mostly thrown away (a folder of 16,700 small files took 2.3x the
// CPU with it). Big files are read ahead at the file level.
type volumeDisk struct {
	*cachedDisk
	next *atomic.Int64 // end of the previous small read
}

func newVolumeDisk(d *cachedDisk) volumeDisk {
	v := volumeDisk{cachedDisk: d, next: new(atomic.Int64)}
	v.next.Store(-1)
	return v
}

// bigRead is the smallest volume read that bypasses the block cache.
const bigRead = 512 << 10

func (v volumeDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > v.size {
		return v.cachedDisk.readAt(p, off, false)
	}
	if len(p) >= bigRead {
		if err := readFull(v.src, p, off); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if v.next.Swap(off+int64(len(p))) == off {
		return v.cachedDisk.readAt(p, off, false)
	}
	return v.readJump(p, off)
}

// readJump reads p at off (inside the disk) from cached blocks where there
// are some and directly from the source elsewhere, filling no block. It
// records the last block it touched, so that a read continuing this one is
// seen as sequential by readAt and fills its block.
func (d *cachedDisk) readJump(p []byte, off int64) (int, error) {
	bs := d.c.blockSize
	for n := 0; n < len(p); {
		pos := off + int64(n)
		b := pos / bs
		bOff := b * bs
		m := min(int64(len(p)-n), min(bOff+bs, d.size)-pos)
		dst := p[n : n+int(m)]
		if !d.allocated(pos, pos+m) {
			clear(dst)
		} else if blk := d.c.peek(cacheKey{d.id, b}); blk != nil {
			copy(dst, blk.data[pos-bOff:])
			blk.release()
		} else if err := readFull(d.src, dst, pos); err != nil {
			return n, err
		}
		d.lastBlock.Store(b)
		n += int(m)
	}
	return len(p), nil
}

// smallRead is the largest read that counts as random access when it
// jumps (see ReadAt): FUSE splits big sequential reads into 128 KiB
// requests, so those always count as big.
const smallRead = 32 << 10

// bypass records that a read of m bytes entered block b ([bOff, bEnd)),
// starting block read-ahead when it follows the previous one (and ahead),
// and reports whether the read is random access that should bypass the
// cache (see readAt).
func (d *cachedDisk) bypass(b, bOff, bEnd, m int64, ahead bool) bool {
	last := d.lastBlock.Swap(b)
	if ahead && d.t != nil && last == b-1 {
		d.readAhead(b + 1)
	}
	return d.randomSmall(last, b, bOff, bEnd, m)
}

// randomSmall is bypass's test: a small read that jumped from block last
// into block b, much larger than itself and not cached.
func (d *cachedDisk) randomSmall(last, b, bOff, bEnd, m int64) bool {
	return last != b && last != b-1 && m <= smallRead && bEnd-bOff >= 4*m && !d.c.has(cacheKey{d.id, b})
}

// block returns block b, cached or filled, with a reference for the caller.
func (d *cachedDisk) block(b int64) (*block, error) {
	bs := d.c.blockSize
	n := min(bs, d.size-b*bs)
	return d.c.get(cacheKey{d.id, b}, n, func(p []byte) error { return d.fill(p, b) })
}

// fill reads block b from the source into p (the whole block; a
// recycled buffer holds another block's bytes until then).
func (d *cachedDisk) fill(p []byte, b int64) error {
	bOff := b * d.c.blockSize
	if !d.allocated(bOff, bOff+int64(len(p))) {
		clear(p)
		return nil
	}
	return readFull(d.src, p, bOff)
}

// LendAt lends the n bytes at off straight out of the cache: bufs hold
// them, read-only, until done is called. It is ReadAt without the copy
// (vhdx.Lender; FUSE replies are written from the bufs). ok is false when
// the range is not entirely inside the disk, is a random small read (see
// readAt), or a block cannot be filled: the caller then uses ReadAt, which
// handles and reports all of those.
func (d *cachedDisk) LendAt(off int64, n int) (bufs [][]byte, done func(), ok bool) {
	var l loan
	if !d.lend(&l, off, int64(n)) {
		l.release()
		return nil, nil, false
	}
	return l.bufs, l.release, true
}

func (d *cachedDisk) lend(l *loan, off, n int64) bool {
	if off < 0 || n <= 0 || off > d.size-n {
		return false
	}
	bs := d.c.blockSize
	for end := off + n; off < end; {
		b := off / bs
		bOff := b * bs
		bEnd := min(bOff+bs, d.size)
		m := min(end-off, bEnd-off)
		switch {
		case !d.allocated(off, off+m):
			l.bufs = append(l.bufs, d.c.zeros[:m])
		case d.randomSmall(d.lastBlock.Load(), b, bOff, bEnd, m):
			// Asked without recording the read: the caller falls back
			// to ReadAt, whose bypass must still see the jump (it used
			// to see the block as the last one read and filled all of
			// it for every random 4 KiB read: 1/6 of the IOPS).
			return false
		default:
			d.bypass(b, bOff, bEnd, m, true)
			blk, err := d.block(b)
			if err != nil {
				return false
			}
			l.blocks = append(l.blocks, blk)
			l.bufs = append(l.bufs, blk.data[off-bOff:off-bOff+m])
		}
		off += m
	}
	return true
}

// readAhead fetches up to Options.ReadAhead worth of blocks from b on, in
// the background, in parallel, skipping holes and blocks already cached or
// in flight. It gives up quietly when the tree's prefetch slots are taken:
// read-ahead must never hold up foreground reads.
func (d *cachedDisk) readAhead(b int64) {
	t := d.t
	if t == nil || t.opts.ReadAhead <= 0 {
		return
	}
	bs := d.c.blockSize
	n := max(t.opts.ReadAhead/bs, 1)
	for k := b; k < b+n && k*bs < d.size; k++ {
		if !d.allocated(k*bs, min(k*bs+bs, d.size)) || d.c.has(cacheKey{d.id, k}) {
			continue
		}
		select {
		case t.diskSlots <- struct{}{}:
		default:
			return
		}
		go func(k int64) {
			defer func() { <-t.diskSlots }()
			if !t.enter() {
				return
			}
			defer t.leave()
			// Errors are not cached; the foreground read reports them.
			if blk, err := d.block(k); err == nil {
				blk.release()
			}
		}(k)
	}
}

// fileDisk presents a file (io.ReaderAt of known size) as a fully
// allocated disk, so guest and config files can read through the same
// cache code: the guest filesystem code then runs once per block, not once
// per kernel read, and read-ahead fills blocks the reader takes as is.
type fileDisk struct {
	r    io.ReaderAt
	size int64
}

func (f fileDisk) ReadAt(p []byte, off int64) (int, error) { return f.r.ReadAt(p, off) }
func (f fileDisk) Size() int64                             { return f.size }
func (f fileDisk) Identity() vdisk.Identity                { return vdisk.Identity{VirtualSize: f.size} }
func (f fileDisk) Close() error                            { return nil }
func (f fileDisk) Allocated() []vdisk.Extent {
	return []vdisk.Extent{{Off: 0, Len: f.size}}
}

// readFull reads exactly len(p) bytes at off; the caller has clipped p to
// the source size, so io.EOF with a full buffer is success.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
