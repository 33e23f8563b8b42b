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
	badOff, badLen int64
}

var errBad = errors.New("chunk deadbeef: bad")

func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
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
				v, err := c.get(k, func() ([]byte, error) {
					fills.Add(1)
					return bytes.Repeat([]byte{byte(k.block)}, 4096), nil
				})
				if err != nil || v[0] != byte(k.block) {
					t.Errorf("block %d: %v", k.block, err)
					return
				}
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
			c.get(cacheKey{1, 1}, func() ([]byte, error) {
				fills.Add(1)
				<-release
				return make([]byte, 4096), nil
			})
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
		if _, err := c.get(cacheKey{2, 0}, func() ([]byte, error) { fills.Add(1); return nil, errBad }); !errors.Is(err, errBad) {
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
	v := volumeDisk{newCachedDisk(src, c, 1)}
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
