package chunkstore

import (
	"context"
)

// prefetchGap is the largest hole between two chunks of one pack that
// Prefetch bridges with one hint rather than two.
const prefetchGap = 256 << 10

// Prefetch hints that the chunks ids will be read soon, in about this
// order: the backends start fetching their stored bytes (on the local
// backend, the kernel's read-ahead into the page cache) and Prefetch
// returns without waiting for them. Neighbouring chunks of a pack are
// hinted as one range. Unknown and unflushed chunks are skipped: the read
// itself will report what is wrong. A restore calls it from a goroutine of
// its own, some tens of megabytes ahead of its reads, so that the disk
// works while the CPU decodes.
func (s *Store) Prefetch(ctx context.Context, ids []ID) {
	var (
		pack     PackID
		off, end int64
		have     bool
	)
	flush := func() {
		if !have {
			return
		}
		if r, err := s.packReader(ctx, pack); err == nil {
			r.Prefetch(ctx, off, end-off)
		}
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		l, err := s.idx.lookup(id)
		if err != nil {
			continue
		}
		o, e := int64(l.Offset), int64(l.Offset)+int64(l.Stored)
		if have && l.Pack == pack && o <= end+prefetchGap && e >= off-prefetchGap {
			off, end = min(off, o), max(end, e)
			continue
		}
		flush()
		pack, off, end, have = l.Pack, o, e, true
	}
	flush()
}
