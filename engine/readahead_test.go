package engine

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// fakePrefetchStore serves chunks of zeros and records Prefetch. With
// waitPrefetch, a read waits (up to a second) until its chunk was hinted,
// like a disk that is only fast for what was read ahead, and counts the
// reads that had to give up.
type fakePrefetchStore struct {
	waitPrefetch bool
	mu           sync.Mutex
	prefetched   map[chunkstore.ID]int
	calls        int
	unhinted     int
}

func (f *fakePrefetchStore) GetRange(ctx context.Context, id chunkstore.ID, off int64, p []byte) (int, error) {
	clear(p)
	for deadline := time.Now().Add(time.Second); f.waitPrefetch; time.Sleep(100 * time.Microsecond) {
		f.mu.Lock()
		// After one miss the test has failed: stop waiting.
		hinted := f.prefetched[id] > 0 || f.unhinted > 0
		if !hinted && time.Now().After(deadline) {
			f.unhinted++
			hinted = true
		}
		f.mu.Unlock()
		if hinted {
			break
		}
	}
	return len(p), nil
}

func (f *fakePrefetchStore) Get(ctx context.Context, id chunkstore.ID) ([]byte, error) {
	return nil, nil
}

func (f *fakePrefetchStore) Prefetch(ctx context.Context, ids []chunkstore.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	for _, id := range ids {
		f.prefetched[id]++
	}
}

// TestReadAheadPrefetchesAhead: a front-to-back read of a disk with read
// ahead on asks the store for every chunk once, before reading it, in
// requests that run ahead of the reads; without read ahead nothing is
// asked.
func TestReadAheadPrefetchesAhead(t *testing.T) {
	const chunk = 1 << 20
	const n = 300
	d := &DiskManifest{Identity: vdisk.Identity{VirtualSize: n*chunk + 5<<20}}
	var seg Segment
	for i := range n {
		var id ChunkID
		id[0], id[1] = byte(i), byte(i>>8)
		// A gap of zeros every 10 chunks, as in a sparse disk.
		off := int64(i)*chunk + int64(i/10)*4096
		seg.Extents = append(seg.Extents, Extent{Off: off, Len: chunk - 4096*int64(i%10/9), ID: id})
	}
	d.Segments = []Segment{seg}
	st := &fakePrefetchStore{prefetched: map[chunkstore.ID]int{}}
	dr := newDiskReader(st, d)

	// Read ahead off: plain reads ask nothing.
	buf := make([]byte, 8<<20)
	dr.ReadAt(buf, 0)
	if st.calls != 0 {
		t.Fatalf("%d prefetch calls without read ahead", st.calls)
	}

	const ahead = 32 << 20
	st.waitPrefetch = true
	stop := dr.startReadAhead(context.Background(), ahead)
	for off := int64(0); off < dr.Size(); off += int64(len(buf)) {
		dr.ReadAt(buf, off)
		if ra := dr.ra.Load(); ra != nil {
			ra.mu.Lock()
			hw := ra.hw
			ra.mu.Unlock()
			// After each read, prefetch has been asked to at least 3/4 of
			// the read-ahead distance past it (requests go a quarter at a
			// time), or to the end.
			if want := min(off+int64(len(buf))+ahead*3/4, dr.Size()); hw < want {
				t.Fatalf("after reading at %d: prefetch asked up to %d, want >= %d", off, hw, want)
			}
		}
	}
	stop()
	if dr.ra.Load() != nil {
		t.Fatal("read ahead still on after stop")
	}
	if st.unhinted > 0 {
		t.Fatalf("%d chunk reads came before their chunk was prefetched", st.unhinted)
	}
	if len(st.prefetched) != n {
		t.Fatalf("%d of %d chunks prefetched", len(st.prefetched), n)
	}
	for id, c := range st.prefetched {
		if c != 1 {
			t.Fatalf("chunk %x prefetched %d times", id[:2], c)
		}
	}
	if st.calls < 4 {
		t.Fatalf("only %d prefetch requests for %d MiB: not incremental", st.calls, dr.Size()>>20)
	}
}

// TestReadAheadWhenSequential: random reads prefetch nothing; a run of
// reads that follow each other starts prefetching once it has read 16 MiB,
// ahead of where it got to; a jump starts a new run.
func TestReadAheadWhenSequential(t *testing.T) {
	const chunk = 1 << 20
	const n = 512
	d := &DiskManifest{Identity: vdisk.Identity{VirtualSize: n * chunk}}
	var seg Segment
	for i := range n {
		var id ChunkID
		id[0], id[1] = byte(i), byte(i>>8)
		seg.Extents = append(seg.Extents, Extent{Off: int64(i) * chunk, Len: chunk, ID: id})
	}
	d.Segments = []Segment{seg}
	st := &fakePrefetchStore{prefetched: map[chunkstore.ID]int{}}
	dr := newDiskReader(st, d)
	const ahead = 32 << 20
	stop := dr.ReadAheadWhenSequential(context.Background(), ahead)
	defer stop()
	ra := dr.ra.Load()
	hw := func() int64 { ra.mu.Lock(); defer ra.mu.Unlock(); return ra.hw }

	// Random 4 KiB reads all over the disk.
	buf := make([]byte, 4096)
	for _, off := range []int64{400 << 20, 3 << 20, 200 << 20, 100 << 20, 450<<20 + 4096, 50 << 20} {
		dr.ReadAt(buf, off)
	}
	if st.calls != 0 || hw() != 50<<20 {
		t.Fatalf("random reads asked for prefetching (calls %d, asked up to %d)", st.calls, hw())
	}
	// A run from 64 MiB in 1 MiB reads: nothing asked before 16 MiB of it,
	// then always 3/4 of the distance ahead.
	big := make([]byte, 1<<20)
	for off := int64(64 << 20); off < 128<<20; off += int64(len(big)) {
		dr.ReadAt(big, off)
		run := off + int64(len(big)) - 64<<20
		switch got := hw(); {
		case run < seqMin && got > 64<<20:
			t.Fatalf("after %d MiB of the run: prefetch asked up to %d already", run>>20, got)
		case run >= seqMin && got < off+int64(len(big))+ahead*3/4:
			t.Fatalf("after %d MiB of the run: prefetch asked up to %d, want >= %d", run>>20, got, off+int64(len(big))+ahead*3/4)
		}
	}
	// A jump back to the start begins a new run: nothing until 16 MiB.
	dr.ReadAt(big, 0)
	if got := hw(); got != 0 {
		t.Fatalf("after a jump: prefetch asked up to %d", got)
	}
}
