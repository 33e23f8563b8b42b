package engine

import (
	"context"
	"sort"
	"sync"

	"github.com/vmvault/vmvault/chunkstore"
)

// prefetcher is the part of the chunkstore that can start fetching chunks
// before they are read (chunkstore.Store.Prefetch).
type prefetcher interface {
	Prefetch(ctx context.Context, ids []chunkstore.ID)
}

var _ prefetcher = (*chunkstore.Store)(nil)

// restoreReadAhead is how far past its reads a restore asks the store to
// prefetch: enough to keep the disk busy for the ~0.1 s the CPU needs to
// decode it, little enough to stay in the page cache until it is read.
const restoreReadAhead = 64 << 20

// readAhead prefetches a DiskReader's chunks ahead of a reader going front
// to back (a restore: the VHDX synthesizer's 8 MiB reads, or the raw
// workers' windows). Without it a restore from a repository that is not in
// the page cache waits for the disk chunk by chunk: 1.6-2.3 s more for the
// reference image, while sequential reading of the whole repository takes
// 1.1 s.
type readAhead struct {
	d     *DiskReader
	ahead int64
	wake  chan struct{} // 1 slot: the prefetcher has work
	// seqOnly: the reader may also jump around (a mount), so only a run of
	// reads that follow each other is prefetched for.
	seqOnly bool

	mu     sync.Mutex
	hw     int64 // prefetch asked up to here (virtual offset)
	sent   int64 // the prefetcher has taken requests up to here
	last   int64 // seqOnly: end of the current run of reads
	streak int64 // seqOnly: bytes read in the current run
}

// Sequential detection for seqOnly read-ahead: a read that starts within
// seqSlack of where the run got to continues it (a mount's cache fills
// several 8 MiB blocks at once, so they arrive a little out of order), and
// prefetching starts once a run has read seqMin bytes.
const (
	seqSlack = 32 << 20
	seqMin   = 16 << 20
)

// startReadAhead turns read-ahead on for d until stop is called (d must not
// be read after stop). Without a store that can prefetch it does nothing.
func (d *DiskReader) startReadAhead(ctx context.Context, ahead int64) (stop func()) {
	return d.readAheadMode(ctx, ahead, false)
}

// ReadAheadWhenSequential turns read-ahead on for d, for runs of reads that
// follow each other (16 MiB and more), until stop: a mount's reader copies
// whole disks and files as well as reading at random, and without it a
// copy from a repository that is not in the page cache waits on the disk
// chunk by chunk. Random reads hint nothing.
func (d *DiskReader) ReadAheadWhenSequential(ctx context.Context, ahead int64) (stop func()) {
	return d.readAheadMode(ctx, ahead, true)
}

func (d *DiskReader) readAheadMode(ctx context.Context, ahead int64, seqOnly bool) (stop func()) {
	p, ok := d.st.(prefetcher)
	if !ok {
		return func() {}
	}
	ra := &readAhead{d: d, ahead: ahead, wake: make(chan struct{}, 1), seqOnly: seqOnly}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-ra.wake:
			}
			// Everything asked for since the last round, in one request:
			// a prefetcher that fell behind catches up without a queue.
			ra.mu.Lock()
			from, to := ra.sent, ra.hw
			ra.sent = to
			ra.mu.Unlock()
			if to > from && ctx.Err() == nil {
				p.Prefetch(ctx, d.chunkIDs(from, to-from))
			}
		}
	}()
	d.ra.Store(ra)
	return func() {
		d.ra.Store(nil)
		close(quit)
		<-done
	}
}

// note records a read of [off, off+n) and asks for the range up to
// off+n+ahead, a quarter of ahead at a time at least. It never blocks the
// reader: the prefetcher takes whatever has been asked for when it is free.
// Ranges the reads have overtaken are not asked for.
func (ra *readAhead) note(off, n int64) {
	end := min(off+n+ra.ahead, ra.d.Size())
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.seqOnly {
		if off < ra.last-seqSlack || off > ra.last+seqSlack {
			// A jump: a new run starts here, and what was asked for the
			// old one is not this run's business.
			ra.streak, ra.hw, ra.sent, ra.last = 0, off, off, off+n
		} else {
			ra.last = max(ra.last, off+n)
		}
		ra.streak += n
		if ra.streak < seqMin {
			return
		}
	}
	if end <= ra.hw || end-ra.hw < ra.ahead/4 && end < ra.d.Size() {
		return
	}
	if ra.sent < off {
		ra.sent = off
	}
	ra.hw = end
	select {
	case ra.wake <- struct{}{}:
	default: // already awake or about to be
	}
}

// chunkIDs lists the chunks of the extents that start in [off, off+n), in
// order, each once per run. Going by where extents start, the ranges that
// note asks for, which follow each other, hint every chunk once; an extent
// that starts before the first range is being read already.
func (d *DiskReader) chunkIDs(off, n int64) []chunkstore.ID {
	ext := d.ext
	i := sort.Search(len(ext), func(i int) bool { return ext[i].Off >= off })
	var ids []chunkstore.ID
	for ; i < len(ext) && ext[i].Off < off+n; i++ {
		id := chunkstore.ID(ext[i].ID)
		if len(ids) == 0 || ids[len(ids)-1] != id {
			ids = append(ids, id)
		}
	}
	return ids
}
