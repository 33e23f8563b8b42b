package mount

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// memDisk is a vdisk.Disk over a byte slice that counts reads and can fail
// a range.
type memDisk struct {
	b              []byte
	alloc          []vdisk.Extent
	reads          atomic.Int64
	bytes          atomic.Int64 // bytes asked of the source
	badOff, badLen int64
}

var errBad = errors.New("chunk deadbeef: bad")

func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
	d.bytes.Add(int64(len(p)))
	if d.badLen > 0 && off < d.badOff+d.badLen && off+int64(len(p)) > d.badOff {
		return 0, errBad
	}
	if off >= int64(len(d.b)) {
		return 0, io.EOF
	}
	n := copy(p, d.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (d *memDisk) Close() error { return nil }
func (d *memDisk) Size() int64  { return int64(len(d.b)) }
func (d *memDisk) Identity() vdisk.Identity {
	return vdisk.Identity{Format: "raw", VirtualSize: int64(len(d.b))}
}
func (d *memDisk) Allocated() []vdisk.Extent { return d.alloc }
func newMemDisk(size int, alloc []vdisk.Extent) *memDisk {
	b := make([]byte, size)
	for _, e := range alloc {
		for i := e.Off; i < e.End(); i++ {
			b[i] = byte(i*7 + i>>11)
		}
	}
	return &memDisk{b: b, alloc: alloc}
}

func TestCachedDiskMatchesSource(t *testing.T) {
	alloc := []vdisk.Extent{{Off: 4096, Len: 100000}, {Off: 300000, Len: 5}, {Off: 700000, Len: 300001}}
	src := newMemDisk(1000001, alloc) // odd size: last block is partial
	c := newBlockCache(1<<20, 64<<10)
	cd := newCachedDisk(src, c, 1)
	rnd := rand.New(rand.NewSource(2))
	for i := 0; i < 2000; i++ {
		off := rnd.Int63n(int64(len(src.b)) + 100)
		n := rnd.Intn(200000)
		got := make([]byte, n)
		want := make([]byte, n)
		gn, gerr := cd.ReadAt(got, off)
		wn, werr := src.ReadAt(want, off)
		if gn != wn || !bytes.Equal(got[:gn], want[:wn]) || (gerr == nil) != (werr == nil) {
			t.Fatalf("read %d at %d: got %d,%v want %d,%v", n, off, gn, gerr, wn, werr)
		}
	}
}

func TestCachedDiskSkipsHolesAndCaches(t *testing.T) {
	src := newMemDisk(8<<20, []vdisk.Extent{{Off: 1 << 20, Len: 1 << 20}})
	cd := newCachedDisk(src, newBlockCache(4<<20, 1<<20), 1)
	buf := make([]byte, 64<<10)
	for off := int64(0); off < 8<<20; off += int64(len(buf)) {
		if _, err := cd.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if n := src.reads.Load(); n != 1 {
		t.Errorf("source reads = %d, want 1 (one allocated block, holes never read)", n)
	}
}

func TestCacheBoundedAndShared(t *testing.T) {
	c := newBlockCache(8*16*4096, 4096) // 16 shards of 8 blocks
	var fills atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				k := cacheKey{1, int64(i % 64)}
				v, err := c.get(k, 4096, func(p []byte) error {
					fills.Add(1)
					for i := range p {
						p[i] = byte(k.block)
					}
					return nil
				})
				if err != nil || v.data[0] != byte(k.block) || v.data[4095] != byte(k.block) {
					t.Errorf("block %d: %v", k.block, err)
					return
				}
				v.release()
			}
		}()
	}
	wg.Wait()
	for i := range c.shards[:c.nshards] {
		s := &c.shards[i]
		if s.size > s.max {
			t.Errorf("shard %d holds %d bytes, max %d", i, s.size, s.max)
		}
	}
	if fills.Load() == 0 {
		t.Fatal("no fills")
	}
}

func TestCacheSingleFlightAndErrorsNotCached(t *testing.T) {
	c := newBlockCache(1<<20, 4096)
	var fills atomic.Int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 10; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := c.get(cacheKey{1, 1}, 4096, func([]byte) error {
				fills.Add(1)
				<-release
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
			b.release()
		}()
	}
	for fills.Load() == 0 {
		runtime.Gosched() // until one fill runs; the others must wait for it
	}
	close(release)
	wg.Wait()
	if n := fills.Load(); n != 1 {
		t.Errorf("%d fills for concurrent misses of one block, want 1", n)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.get(cacheKey{2, 0}, 4096, func([]byte) error { fills.Add(1); return errBad }); !errors.Is(err, errBad) {
			t.Errorf("error not returned: %v", err)
		}
	}
	if n := fills.Load(); n != 3 {
		t.Errorf("failed fill was cached (fills %d, want 3)", n)
	}
}

// A damaged range fails only the reads that touch it, even inside a block
// that also holds good data.
func TestCachedDiskDamageIsolated(t *testing.T) {
	src := newMemDisk(4<<20, []vdisk.Extent{{Off: 0, Len: 4 << 20}})
	src.badOff, src.badLen = 1<<20+100000, 4096
	cd := newCachedDisk(src, newBlockCache(8<<20, 1<<20), 1)
	buf := make([]byte, 4096)
	if _, err := cd.ReadAt(buf, 1<<20); err != nil {
		t.Errorf("good range in a damaged block: %v", err)
	}
	if _, err := cd.ReadAt(buf, src.badOff); !errors.Is(err, errBad) {
		t.Errorf("damaged range: %v", err)
	}
	if _, err := cd.ReadAt(buf, 3<<20); err != nil {
		t.Errorf("other block: %v", err)
	}
}

func TestReadAheadWarmsCache(t *testing.T) {
	src := newMemDisk(16<<20, []vdisk.Extent{{Off: 0, Len: 16 << 20}})
	tr := New(nil, Options{CacheSize: 64 << 20, BlockSize: 1 << 20, ReadAhead: 8 << 20, Logf: t.Logf})
	cd := newCachedDisk(src, tr.cache, 1)
	h := &Handle{t: tr, path: "x", r: cd, size: cd.Size()}
	buf := make([]byte, 128<<10)
	for off := int64(0); off < 4<<20; off += int64(len(buf)) {
		if _, err := h.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	h.wg.Wait() // let the read-ahead finish
	before := src.reads.Load()
	if before <= 4 {
		t.Fatalf("read-ahead read nothing ahead (%d source reads)", before)
	}
	// The next blocks come from the cache now.
	if _, err := cd.ReadAt(buf, 5<<20); err != nil {
		t.Fatal(err)
	}
	if src.reads.Load() != before {
		t.Errorf("block 5 was not prefetched")
	}
}

func TestCleanPathAndIno(t *testing.T) {
	for in, want := range map[string]string{"": ".", "/": ".", "/a/b/": "a/b", "a//b": "a/b", "/a/../b": "b", `a\b`: "a/b", "..": "."} {
		if got := CleanPath(in); got != want {
			t.Errorf("CleanPath(%q) = %q, want %q", in, got, want)
		}
	}
	if inoOf("a/b") != inoOf("a/b") || inoOf("a/b") == inoOf("a/c") || inoOf("x") <= RootIno {
		t.Error("inode numbers not stable or not distinct")
	}
}

func TestUnixMode(t *testing.T) {
	for m, want := range map[uint32]uint32{
		uint32(0o755 | 1<<31): 0o040755, // fs.ModeDir
		uint32(0o777 | 1<<27): 0o120777, // fs.ModeSymlink
		0o644:                 0o100644,
		uint32(0o755 | 1<<23): 0o104755, // setuid
	} {
		if got := UnixMode(fs.FileMode(m)); got != want {
			t.Errorf("UnixMode(%o) = %o, want %o", m, got, want)
		}
	}
}

func TestSeekDataHole(t *testing.T) {
	ext := []vdisk.Extent{{Off: 100, Len: 50}, {Off: 300, Len: 100}}
	const size = 1000
	for _, c := range []struct {
		off        int64
		data, hole int64
		dok, hok   bool
	}{
		{0, 100, 0, true, true},
		{100, 100, 150, true, true},
		{149, 149, 150, true, true},
		{150, 300, 150, true, true},
		{399, 399, 400, true, true},
		{400, 0, 400, false, true},
		{999, 0, 999, false, true},
		{1000, 0, 1000, false, true},
		{1001, 0, 0, false, false},
		{-1, 0, 0, false, false},
	} {
		d, dok := seekData(ext, size, c.off)
		h, hok := seekHole(ext, size, c.off)
		if dok != c.dok || (dok && d != c.data) || hok != c.hok || (hok && h != c.hole) {
			t.Errorf("off %d: data %d,%v hole %d,%v; want %d,%v %d,%v", c.off, d, dok, h, hok, c.data, c.dok, c.hole, c.hok)
		}
	}
	// An extent running to the end: the hole is at EOF.
	if h, _ := seekHole([]vdisk.Extent{{Off: 0, Len: size}}, size, 5); h != size {
		t.Errorf("hole in a full file at %d", h)
	}
	got := clipExtents([]vdisk.Extent{{Off: 0, Len: 10}, {Off: 50, Len: 100}, {Off: 300, Len: 10}}, 100, 200)
	if len(got) != 1 || got[0] != (vdisk.Extent{Off: 0, Len: 50}) {
		t.Errorf("clipExtents: %v", got)
	}
	if got := clipExtents([]vdisk.Extent{{Off: 0, Len: 10}}, 100, 200); got == nil || len(got) != 0 {
		t.Errorf("clipExtents of a hole: %#v, want empty and known", got)
	}
}

func TestReadErrorsRateLimited(t *testing.T) {
	var lines atomic.Int64
	tr := New(nil, Options{Logf: func(string, ...any) { lines.Add(1) }})
	for i := 0; i < 1000; i++ {
		tr.logReadError(errBad)
	}
	if n := lines.Load(); n != readErrBurst {
		t.Errorf("%d lines logged for 1000 errors, want %d", n, readErrBurst)
	}
}

func TestDiskReadAhead(t *testing.T) {
	src := newMemDisk(16<<20, []vdisk.Extent{{Off: 0, Len: 16 << 20}})
	tr := New(nil, Options{CacheSize: 64 << 20, BlockSize: 1 << 20, ReadAhead: 4 << 20, Logf: t.Logf})
	cd := newCachedDisk(src, tr.cache, 7)
	cd.t = tr
	buf := make([]byte, 4096)
	for _, off := range []int64{0, 1 << 20} { // two consecutive blocks: a stream
		if _, err := cd.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for b := int64(2); b < 6; b++ {
		for !tr.cache.has(cacheKey{7, b}) {
			if time.Now().After(deadline) {
				t.Fatalf("block %d not read ahead", b)
			}
			time.Sleep(time.Millisecond)
		}
	}
	tr.Close() // waits for background fills
	if tr.cache.has(cacheKey{7, 7}) {
		t.Errorf("read ahead beyond the window")
	}
	// Random access starts no read-ahead.
	tr2 := New(nil, Options{CacheSize: 64 << 20, BlockSize: 1 << 20, ReadAhead: 4 << 20, Logf: t.Logf})
	cd2 := newCachedDisk(src, tr2.cache, 8)
	cd2.t = tr2
	for _, off := range []int64{5 << 20, 1 << 20, 9 << 20} {
		cd2.ReadAt(buf, off)
	}
	tr2.Close()
	if tr2.cache.has(cacheKey{8, 10}) || tr2.cache.has(cacheKey{8, 6}) {
		t.Errorf("random reads triggered read-ahead")
	}
}

func TestLooksLikeRPID(t *testing.T) {
	for name, want := range map[string]bool{"2026-11-20T100000Z": true, "2026-11-20T100000Z.2": true, "2026-11-20T100000Z.x": false,
		"desktop.ini": false, ".hidden": false, "2026-13-20T100000Z": false, "latest": false} {
		if got := looksLikeRPID(name); got != want {
			t.Errorf("looksLikeRPID(%q) = %v", name, got)
		}
	}
}

// TestVolumeDiskBigReadsBypassCache: a guest filesystem's big read (a file
// block being filled) reads the source directly and leaves the disk's block
// cache alone; its small reads are cached.
func TestVolumeDiskBigReadsBypassCache(t *testing.T) {
	src := newMemDisk(8<<20, []vdisk.Extent{{Off: 0, Len: 8 << 20}})
	c := newBlockCache(16<<20, 1<<20)
	v := newVolumeDisk(newCachedDisk(src, c, 1))
	big := make([]byte, 1<<20)
	if n, err := v.ReadAt(big, 2<<20); err != nil || n != len(big) {
		t.Fatalf("big read: %d, %v", n, err)
	}
	if !bytes.Equal(big, src.b[2<<20:3<<20]) {
		t.Fatal("big read: wrong bytes")
	}
	if c.has(cacheKey{1, 2}) {
		t.Error("big read filled the block cache")
	}
	// Two small reads in one block: the first is a random jump (read
	// directly), the second stays in the block and fills it.
	small := make([]byte, 4096)
	for i := range 2 {
		if _, err := v.ReadAt(small, 5<<20+int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if !c.has(cacheKey{1, 5}) {
		t.Error("small reads not cached")
	}
}

// TestVolumeDiskJumpsFillNoBlock: the guest filesystem's small reads that
// jump (the data of small files read in name order while NTFS laid them
// out in creation order, go-ntfs's 64 KiB metadata pages) read only their
// own bytes from the source: filling a 1 MiB block for each decoded 3.5x
// the bytes of a folder copy. A jump into a cached block is served from it,
// and a read that continues the previous one exactly still fills its block.
func TestVolumeDiskJumpsFillNoBlock(t *testing.T) {
	const bs = 1 << 20
	src := newMemDisk(64*bs, []vdisk.Extent{{Off: 0, Len: 64 * bs}})
	c := newBlockCache(16*bs, bs)
	v := newVolumeDisk(newCachedDisk(src, c, 1))
	rng := rand.New(rand.NewSource(1))
	var asked int64
	for i := range 200 {
		n := []int{700, 4096, 20 << 10, 64 << 10, 200 << 10, 500 << 10}[i%6]
		off := rng.Int63n(64*bs - int64(n))
		if i%6 == 3 {
			off -= off % (64 << 10) // a go-ntfs page
		}
		p := make([]byte, n)
		if k, err := v.ReadAt(p, off); err != nil || k != n {
			t.Fatalf("read %d bytes at %d: %d, %v", n, off, k, err)
		}
		if !bytes.Equal(p, src.b[off:off+int64(n)]) {
			t.Fatalf("read %d bytes at %d: wrong bytes", n, off)
		}
		asked += int64(n)
		if got := src.bytes.Load(); got != asked {
			t.Fatalf("after %d jumping reads (last %d bytes at %d): %d bytes read from the source for %d asked: a block was filled", i+1, n, off, got, asked)
		}
	}
	// A read continuing the previous one fills its block (a metadata
	// scan), and a later jump into that block costs the source nothing.
	p := make([]byte, 4096)
	for _, off := range []int64{40*bs + 8192, 40*bs + 8192 + 4096} {
		if _, err := v.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	if !c.has(cacheKey{1, 40}) {
		t.Fatal("a read continuing the previous one did not fill its block")
	}
	before := src.bytes.Load()
	if _, err := v.ReadAt(p, 3*bs); err != nil { // elsewhere
		t.Fatal(err)
	}
	if _, err := v.ReadAt(p, 40*bs+512<<10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, src.b[40*bs+512<<10:40*bs+512<<10+4096]) {
		t.Fatal("jump into a cached block: wrong bytes")
	}
	if got := src.bytes.Load() - before; got != 4096 {
		t.Errorf("a jump into a cached block read %d bytes from the source (want only the other read's 4096)", got-4096)
	}
}

// fillWith fills a cache block with b.
func fillWith(b byte) func(p []byte) error {
	return func(p []byte) error {
		for i := range p {
			p[i] = b
		}
		return nil
	}
}

// TestBlockBufferNotRecycledWhileReferenced: a block a reader still holds
// (a FUSE reply being written from it) is evicted and many blocks are filled
// after it; its buffer must not be handed to any of those fills, and must be
// recycled once released.
func TestBlockBufferNotRecycledWhileReferenced(t *testing.T) {
	const bs = 4096
	c := newBlockCache(8*bs, bs) // one shard of 8 blocks
	held, err := c.get(cacheKey{1, 0}, bs, fillWith(0xAA))
	if err != nil {
		t.Fatal(err)
	}
	data := held.data
	for i := int64(1); i < 100; i++ { // evicts block 0, recycles the others
		b, err := c.get(cacheKey{1, i}, bs, fillWith(byte(i)))
		if err != nil {
			t.Fatal(err)
		}
		if &b.data[0] == &data[0] {
			t.Fatalf("block %d was filled into the buffer of a block still referenced", i)
		}
		b.release()
	}
	if c.has(cacheKey{1, 0}) {
		t.Fatal("block 0 not evicted; the test proves nothing")
	}
	for i, v := range data {
		if v != 0xAA {
			t.Fatalf("held block changed at byte %d: %#x", i, v)
		}
	}
	held.release()
	reused := false
	for i := int64(100); i < 120 && !reused; i++ {
		b, err := c.get(cacheKey{1, i}, bs, fillWith(byte(i)))
		if err != nil {
			t.Fatal(err)
		}
		reused = &b.data[0] == &data[0]
		b.release()
	}
	if !reused {
		t.Error("a released buffer was never recycled")
	}
	defer func() {
		if recover() == nil {
			t.Error("releasing a block twice did not panic")
		}
	}()
	held.release()
}

// TestCacheRefsBalanced: after concurrent readers (hits, misses, waiters on
// one fill) have released their blocks, each cached block holds exactly
// the cache's reference.
func TestCacheRefsBalanced(t *testing.T) {
	const bs = 4096
	c := newBlockCache(16*8*bs, bs)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := cacheKey{1, int64(i*7+g) % 200}
				b, err := c.get(k, bs, func(p []byte) error {
					runtime.Gosched() // let others join the fill
					return fillWith(byte(k.block))(p)
				})
				if err != nil || b.data[bs-1] != byte(k.block) {
					t.Errorf("block %d: %v", k.block, err)
					return
				}
				b.release()
			}
		}()
	}
	wg.Wait()
	for i := range c.shards[:c.nshards] {
		for e := c.shards[i].ll.Front(); e != nil; e = e.Next() {
			if r := e.Value.(*cacheItem).b.refs.Load(); r != 1 {
				t.Errorf("cached block %d holds %d references, want 1", e.Value.(*cacheItem).k.block, r)
			}
		}
	}
}

// TestCachedDiskLendMatchesReadAt: lent bytes are the bytes ReadAt gives,
// across block boundaries, holes and the short last block, and every loan
// returns its references.
func TestCachedDiskLendMatchesReadAt(t *testing.T) {
	alloc := []vdisk.Extent{{Off: 4096, Len: 100000}, {Off: 300000, Len: 5}, {Off: 700000, Len: 300001}}
	src := newMemDisk(1000001, alloc)
	c := newBlockCache(1<<20, 64<<10)
	cd := newCachedDisk(src, c, 1)
	rnd := rand.New(rand.NewSource(3))
	lent := 0
	for i := 0; i < 2000; i++ {
		n := 1 + rnd.Intn(200000)
		off := rnd.Int63n(int64(len(src.b)) - int64(n) + 1)
		if i%2 == 0 {
			off -= off % (64 << 10) // block-aligned, like FUSE's reads
		}
		bufs, done, ok := cd.LendAt(off, n)
		if !ok {
			continue // a random small read: ReadAt's business
		}
		lent++
		var got []byte
		for _, b := range bufs {
			got = append(got, b...)
		}
		if !bytes.Equal(got, src.b[off:off+int64(n)]) {
			t.Fatalf("lend %d at %d: wrong bytes", n, off)
		}
		done()
	}
	if lent < 1000 {
		t.Errorf("only %d of 2000 ranges lent", lent)
	}
	if _, _, ok := cd.LendAt(int64(len(src.b))-10, 11); ok {
		t.Error("lent a range past the end")
	}
	for i := range c.shards[:c.nshards] {
		for e := c.shards[i].ll.Front(); e != nil; e = e.Next() {
			if r := e.Value.(*cacheItem).b.refs.Load(); r != 1 {
				t.Errorf("block %d holds %d references after all loans ended, want 1", e.Value.(*cacheItem).k.block, r)
			}
		}
	}
}

// TestHandleLend: a handle over a lender lends whole reads, clips them at
// the end of the file and reads ahead like ReadAt; a closed handle lends
// nothing.
func TestHandleLend(t *testing.T) {
	src := newMemDisk(16<<20, []vdisk.Extent{{Off: 0, Len: 16 << 20}})
	tr := New(nil, Options{CacheSize: 64 << 20, BlockSize: 1 << 20, ReadAhead: 8 << 20, Logf: t.Logf})
	cd := newCachedDisk(src, tr.cache, 1)
	h := &Handle{t: tr, path: "x", r: cd, size: cd.Size() - 100}
	for off := int64(0); off < 4<<20; off += 1 << 20 {
		bufs, done, ok := h.Lend(off, 1<<20)
		if !ok || len(bufs) != 1 || !bytes.Equal(bufs[0], src.b[off:off+1<<20]) {
			t.Fatalf("lend at %d: ok %v", off, ok)
		}
		done()
	}
	h.wg.Wait()
	if !tr.cache.has(cacheKey{1, 6}) {
		t.Error("lending reads did not read ahead")
	}
	bufs, done, ok := h.Lend(15<<20, 1<<20)
	if !ok || len(bufs) != 1 || len(bufs[0]) != 1<<20-100 {
		t.Fatalf("lend at the end: ok %v, %d bufs", ok, len(bufs))
	}
	done()
	if _, _, ok := h.Lend(h.size, 1); ok {
		t.Error("lent at EOF")
	}
	h.Close()
	if _, _, ok := h.Lend(0, 1); ok {
		t.Error("lent after Close")
	}
}

// TestLendFallbackKeepsRandomBypass: a random small read is refused by
// LendAt and served by ReadAt without filling its block (the FUSE adapter
// tries LendAt first). LendAt once recorded the read, so ReadAt took it for
// a sequential one and filled the whole block for every random 4 KiB read.
func TestLendFallbackKeepsRandomBypass(t *testing.T) {
	const bs = 1 << 20
	src := newMemDisk(64*bs, []vdisk.Extent{{Off: 0, Len: 64 * bs}})
	c := newBlockCache(16*bs, bs)
	cd := newCachedDisk(src, c, 1)
	p := make([]byte, 4096)
	for i, b := range []int64{40, 3, 17, 55, 9, 30} {
		off := b*bs + int64(i)*8192
		if _, _, ok := cd.LendAt(off, len(p)); ok {
			t.Fatalf("read %d: a random 4 KiB read at block %d was lent (its block filled)", i, b)
		}
		if _, err := cd.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, src.b[off:off+int64(len(p))]) {
			t.Fatalf("read %d: wrong bytes", i)
		}
		if c.has(cacheKey{1, b}) {
			t.Fatalf("read %d: random 4 KiB read at block %d filled the block", i, b)
		}
	}
	// A read that stays in its block is sequential: now the block fills
	// and later reads are lent from it.
	if _, err := cd.ReadAt(p, 30*bs+5*8192+4096); err != nil {
		t.Fatal(err)
	}
	bufs, done, ok := cd.LendAt(30*bs+64<<10, 4096)
	if !ok || !bytes.Equal(bufs[0], src.b[30*bs+64<<10:30*bs+64<<10+4096]) {
		t.Fatalf("sequential read in a filled block not lent (ok %v)", ok)
	}
	done()
}
