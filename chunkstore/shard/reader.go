package shard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/klauspost/reedsolomon"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Reader reads byte ranges of a stored pack. It is safe for concurrent use:
// headers are fixed at open, checksum tables are loaded once per shard and
// then read lock-free.
type Reader struct {
	targets []Target
	h       Header // consensus header of the pack (Index 0, TableCRC 0)
	enc     reedsolomon.Encoder
	sh      []shardState
}

type shardState struct {
	hdr     Header // this shard's own header (valid unless openErr != nil)
	openErr error  // why the shard is unusable from the start (missing, bad or foreign header)
	dead    atomic.Bool
	bad     atomic.Bool // ever seen damaged by this Reader (for Bad)

	mu       sync.Mutex
	table    atomic.Pointer[[]uint32]
	tableErr error // permanent failure loading the table (guarded by mu)
	deadErr  error // why dead was set after open (guarded by mu)
}

// markDead records that shard i is unusable for the rest of this Reader.
func (r *Reader) markDead(i int, err error) {
	st := &r.sh[i]
	st.mu.Lock()
	if st.deadErr == nil {
		st.deadErr = err
	}
	st.mu.Unlock()
	st.dead.Store(true)
	st.bad.Store(true)
}

// NewReader opens a pack: it reads the header and first table page of every
// shard in parallel (one small read each), takes the header at least K shards
// agree on, and tolerates the rest being missing, damaged or foreign. It
// fails with ErrUnrecoverable when fewer than K shards have a valid header.
func NewReader(ctx context.Context, targets []Target) (*Reader, error) {
	r, err := open(ctx, targets)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// open does NewReader's work but also returns the partially filled Reader on
// a consensus failure, so Verify can report per-shard status.
func open(ctx context.Context, targets []Target) (*Reader, error) {
	if len(targets) == 0 || len(targets) > MaxShards {
		return nil, fmt.Errorf("shard: %d targets (want 1..%d)", len(targets), MaxShards)
	}
	r := &Reader{targets: targets, sh: make([]shardState, len(targets))}
	pre := make([][]byte, len(targets))
	var wg sync.WaitGroup
	for i := range targets {
		wg.Go(func() {
			buf := make([]byte, prefetchLen)
			n, err := targets[i].BE.ReadAt(ctx, targets[i].Name, buf, 0)
			st := &r.sh[i]
			if n < HeaderSize {
				if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					err = corruptf("shard: shard %d: object too short (%d bytes)", i, n)
				}
				st.openErr = fmt.Errorf("shard: shard %d (%s): %w", i, targets[i].Name, err)
				return
			}
			h, err := ParseHeader(buf[:n])
			if err != nil {
				st.openErr = fmt.Errorf("shard: shard %d (%s): %w", i, targets[i].Name, err)
				return
			}
			if h.Index != i {
				st.openErr = corruptf("shard: shard %d (%s): header says index %d", i, targets[i].Name, h.Index)
				return
			}
			st.hdr = h
			pre[i] = buf[:n]
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("shard: open: %w", err)
	}

	// Consensus: the layout the most shards agree on (first one on a tie).
	best, bestN := -1, 0
	for i := range r.sh {
		if r.sh[i].openErr != nil {
			continue
		}
		n := 0
		for j := range r.sh {
			if r.sh[j].openErr == nil && r.sh[j].hdr.sameLayout(r.sh[i].hdr) {
				n++
			}
		}
		if n > bestN {
			best, bestN = i, n
		}
	}
	if best < 0 {
		for i := range r.sh {
			r.sh[i].dead.Store(true)
			r.sh[i].bad.Store(true)
		}
		return r, fmt.Errorf("shard: no shard of %d has a valid header (first: %v): %w", len(targets), r.sh[0].openErr, ErrUnrecoverable)
	}
	h := r.sh[best].hdr
	h.Index, h.TableCRC = 0, 0
	r.h = h
	for i := range r.sh {
		st := &r.sh[i]
		if st.openErr == nil && !st.hdr.sameLayout(h) {
			st.openErr = corruptf("shard: shard %d (%s): header belongs to another pack or layout", i, targets[i].Name)
		}
		if st.openErr != nil {
			st.dead.Store(true)
			st.bad.Store(true)
			continue
		}
		// The first table page came with the header; use it when it holds
		// the whole table.
		if tl := h.TableLen(); int64(len(pre[i])) >= HeaderSize+tl {
			t, err := parseTable(st.hdr, pre[i][HeaderSize:HeaderSize+tl])
			if err != nil {
				st.tableErr = err
				st.dead.Store(true)
				st.bad.Store(true)
			} else {
				st.table.Store(&t)
			}
		}
	}
	if len(targets) != h.K+h.M {
		return r, corruptf("shard: %d targets but headers say K=%d M=%d", len(targets), h.K, h.M)
	}
	if bestN < h.K {
		return r, fmt.Errorf("shard: only %d of %d shards have a valid header, need K=%d: %w", bestN, len(targets), h.K, ErrUnrecoverable)
	}
	if h.M > 0 {
		enc, err := encoder(h.K, h.M)
		if err != nil {
			return r, err
		}
		r.enc = enc
	}
	return r, nil
}

// Header returns the pack's header (Index 0, TableCRC 0: the fields common
// to all shards). Callers should check PackID against what they expect.
func (r *Reader) Header() Header { return r.h }

// Bad returns the indexes of shards this Reader has so far found missing or
// damaged (at open or during reads), a hint that Repair is due.
func (r *Reader) Bad() []int {
	var out []int
	for i := range r.sh {
		if r.sh[i].bad.Load() {
			out = append(out, i)
		}
	}
	return out
}

// why returns the reason shard i is unusable as a whole, or nil.
func (r *Reader) why(i int) error {
	st := &r.sh[i]
	if st.openErr != nil {
		return st.openErr
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.tableErr != nil {
		return st.tableErr
	}
	if st.deadErr != nil {
		return st.deadErr
	}
	return corruptf("shard: shard %d: unusable", i)
}

// table returns shard i's block checksums, loading them once.
func (r *Reader) table(ctx context.Context, i int) ([]uint32, error) {
	st := &r.sh[i]
	if t := st.table.Load(); t != nil {
		return *t, nil
	}
	if st.openErr != nil {
		return nil, st.openErr
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if t := st.table.Load(); t != nil {
		return *t, nil
	}
	if st.tableErr != nil {
		return nil, st.tableErr
	}
	region := make([]byte, st.hdr.TableLen())
	_, err := r.targets[i].BE.ReadAt(ctx, r.targets[i].Name, region, HeaderSize)
	if err == nil {
		var t []uint32
		if t, err = parseTable(st.hdr, region); err == nil {
			st.table.Store(&t)
			return t, nil
		}
	} else {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err = fmt.Errorf("shard: shard %d (%s): read checksum table: %w", i, r.targets[i].Name, err)
	}
	// Damage and missing objects are permanent for this Reader; other I/O
	// errors are retried on the next read.
	if errors.Is(err, ErrCorrupt) || errors.Is(err, backend.ErrNotFound) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		st.tableErr = err
		st.dead.Store(true)
	}
	st.bad.Store(true)
	return nil, err
}

// readBlocks reads nb blocks of shard i from block b0 into buf (len nb*bs)
// and sets good[j] for every block read in full whose checksum matches.
// If each is not nil it gets every good block right after its checksum, while
// the block is still in cache (readSpan copies it out there).
// damage describes the first bad block (nil if all good); fatal is a
// context error that must abort the caller.
func (r *Reader) readBlocks(ctx context.Context, i, b0, nb int, buf []byte, good []bool, each func(j int, blk []byte)) (damage, fatal error) {
	bs := r.h.BlockSize
	clear(good[:nb])
	if r.sh[i].dead.Load() {
		return r.why(i), nil
	}
	t, err := r.table(ctx, i)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return err, nil
	}
	h := r.sh[i].hdr
	n, rerr := r.targets[i].BE.ReadAt(ctx, r.targets[i].Name, buf[:nb*bs], h.DataOffset()+int64(b0)*int64(bs))
	if rerr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(rerr, backend.ErrNotFound) {
			err := fmt.Errorf("shard: shard %d (%s): %w", i, r.targets[i].Name, rerr)
			r.markDead(i, err)
			return err, nil
		}
	}
	for j := range nb {
		if (j+1)*bs > n {
			if damage == nil {
				if rerr == nil || errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
					damage = corruptf("shard: shard %d: block %d: object truncated", i, b0+j)
				} else {
					damage = fmt.Errorf("shard: shard %d: block %d: %w", i, b0+j, rerr)
				}
			}
			break
		}
		if blk := buf[j*bs : (j+1)*bs]; crc(blk) == t[b0+j] {
			good[j] = true
			if each != nil {
				each(j, blk)
			}
		} else if damage == nil {
			damage = corruptf("shard: shard %d: block %d checksum mismatch", i, b0+j)
		}
	}
	if damage != nil {
		r.sh[i].bad.Store(true)
	}
	return damage, nil
}

// badSet collects the shards found bad during one operation, with the first
// reason for each.
type badSet struct {
	idx []int
	why []error
}

func (b *badSet) add(i int, err error) {
	if slices.Contains(b.idx, i) {
		return
	}
	b.idx = append(b.idx, i)
	b.why = append(b.why, err)
}

func (b *badSet) list() []int {
	if len(b.idx) == 0 {
		return nil
	}
	out := slices.Clone(b.idx)
	slices.Sort(out)
	return out
}

// bufPool holds *[]byte scratch buffers of whole blocks for unaligned reads
// and reconstruction; putBuf keeps only buffers up to maxPooledBuf so a
// one-off huge read does not pin its buffer.
var bufPool sync.Pool

const maxPooledBuf = 4 << 20

func putBuf(p *[]byte) {
	if cap(*p) <= maxPooledBuf {
		bufPool.Put(p)
	}
}

func getBuf(n int) *[]byte {
	if p, ok := bufPool.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n)
	return &b
}

// ReadAt fills p with pack bytes [off, off+len(p)). It reads only the data
// blocks covering the range, in one read per data shard touched, and checks
// their checksums. Blocks that are missing or corrupt are rebuilt stripe by
// stripe from other shards; bad lists the shard indexes found bad on the way
// (nil when the read was clean). ReadAt never writes: Repair does.
// Like io.ReaderAt, a read past PackLen returns the bytes up to it and io.EOF.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off int64) (n int, bad []int, err error) {
	if off < 0 {
		return 0, nil, fmt.Errorf("shard: read at negative offset %d", off)
	}
	if off >= r.h.PackLen {
		if len(p) == 0 {
			return 0, nil, nil
		}
		return 0, nil, io.EOF
	}
	want := int64(len(p))
	if off+want > r.h.PackLen {
		want = r.h.PackLen - off
		err = io.EOF
	}
	var bs badSet
	s := r.h.ShardLen
	var done int64
	for done < want {
		i, so, l := firstSpan(off+done, want-done, s)
		if e := r.readSpan(ctx, i, so, p[done:done+l], &bs); e != nil {
			return int(done), bs.list(), e
		}
		done += l
	}
	return int(want), bs.list(), err
}

// View returns pack bytes [off, off+n) like ReadAt, but as a slice of a
// pooled buffer when they lie in one data shard (almost always: shards are
// megabytes, chunks a fraction of that). The shard's blocks are read into
// that buffer and checked in place, so the caller gets them without the
// copy out of whole blocks that ReadAt makes for an unaligned range. Call
// release (never nil) when done with b; b must not be used after it.
func (r *Reader) View(ctx context.Context, off int64, n int) (b []byte, release func(), bad []int, err error) {
	noop := func() {}
	if off < 0 || n < 0 || off+int64(n) > r.h.PackLen {
		return nil, noop, nil, fmt.Errorf("shard: view [%d, %d) outside a pack of %d bytes", off, off+int64(n), r.h.PackLen)
	}
	if n == 0 {
		return nil, noop, nil, nil
	}
	i, so, l := firstSpan(off, int64(n), r.h.ShardLen)
	if l < int64(n) { // crosses into the next data shard
		buf := make([]byte, n)
		_, bad, err := r.ReadAt(ctx, buf, off)
		return buf, noop, bad, err
	}
	bsz := r.h.BlockSize
	b0, b1 := blockRange(so, int64(n), bsz)
	nb := b1 - b0 + 1
	pb := getBuf(nb * bsz)
	release = func() { putBuf(pb) }
	buf := *pb
	var bs badSet
	err = r.readRepaired(ctx, i, b0, nb, buf, &bs, nil, func(b int, blk []byte) {
		copy(buf[(b-b0)*bsz:(b-b0+1)*bsz], blk)
	})
	if err != nil {
		release()
		return nil, noop, bs.list(), err
	}
	start := so - int64(b0)*int64(bsz)
	return buf[start : start+int64(n) : start+int64(n)], release, bs.list(), nil
}

// readSpan fills dst with data shard i's bytes [so, so+len(dst)).
func (r *Reader) readSpan(ctx context.Context, i int, so int64, dst []byte, bad *badSet) error {
	bsz := r.h.BlockSize
	b0, b1 := blockRange(so, int64(len(dst)), bsz)
	nb := b1 - b0 + 1
	// Aligned ranges are read straight into dst; others through a pooled
	// buffer of whole blocks.
	aligned := so%int64(bsz) == 0 && len(dst)%bsz == 0
	var buf []byte
	var each func(j int, blk []byte)
	if aligned {
		buf = dst
	} else {
		pb := getBuf(nb * bsz)
		defer putBuf(pb)
		buf = *pb
		each = func(j int, blk []byte) { copyBlock(dst, so, b0+j, bsz, blk) }
	}
	return r.readRepaired(ctx, i, b0, nb, buf, bad, each, func(b int, blk []byte) {
		copyBlock(dst, so, b, bsz, blk)
	})
}

// readRepaired reads nb blocks of data shard i from block b0 into buf
// (readBlocks, with each) and rebuilds the missing or corrupt ones from the
// other shards, handing each rebuilt block to out; bad collects the shards
// found bad.
func (r *Reader) readRepaired(ctx context.Context, i, b0, nb int, buf []byte, bad *badSet, each, out func(int, []byte)) error {
	var goodArr [32]bool // no allocation for reads up to 32 blocks
	var good []bool
	if nb <= len(goodArr) {
		good = goodArr[:nb]
	} else {
		good = make([]bool, nb)
	}
	damage, fatal := r.readBlocks(ctx, i, b0, nb, buf, good, each)
	if fatal != nil {
		return fmt.Errorf("shard: read shard %d: %w", i, fatal)
	}
	var missing []int
	for j := range nb {
		if !good[j] {
			missing = append(missing, b0+j)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	bad.add(i, damage)
	return r.reconstruct(ctx, i, missing, bad, out)
}

// copyBlock copies the part of shard block b (data blk) that overlaps shard
// range [so, so+len(dst)) into dst.
func copyBlock(dst []byte, so int64, b, bs int, blk []byte) {
	bStart := int64(b) * int64(bs)
	lo := max(bStart, so)
	hi := min(bStart+int64(bs), so+int64(len(dst)))
	if lo >= hi {
		return
	}
	copy(dst[lo-so:hi-so], blk[lo-bStart:hi-bStart])
}

// reconstruct rebuilds blocks (ascending indexes) of shard target from the
// same stripes of other shards and hands each to out. It reads helpers in
// rounds: each round takes as many untried shards as the worst stripe still
// lacks and reads, from each, one contiguous block range covering the
// stripes still short. Usually that is one round of K reads.
func (r *Reader) reconstruct(ctx context.Context, target int, blocks []int, bad *badSet, out func(b int, blk []byte)) error {
	k, total, bsz := r.h.K, r.h.K+r.h.M, r.h.BlockSize
	if r.enc == nil {
		return fmt.Errorf("shard: shard %d: block %d unreadable and no parity (M=0): %v: %w",
			target, blocks[0], bad.why[len(bad.why)-1], ErrUnrecoverable)
	}
	have := make([][][]byte, len(blocks))
	count := make([]int, len(blocks))
	for j := range have {
		have[j] = make([][]byte, total)
	}
	var cands []int
	for c := range total {
		if c != target && !r.sh[c].dead.Load() {
			cands = append(cands, c)
		} else if c != target {
			bad.add(c, r.why(c))
		}
	}
	next := 0
	for {
		need, lo, hi := 0, -1, -1
		for j := range blocks {
			if count[j] < k {
				need = max(need, k-count[j])
				if lo < 0 {
					lo = j
				}
				hi = j
			}
		}
		if need == 0 {
			break
		}
		if next >= len(cands) {
			return r.unrecoverable(target, blocks[lo], count[lo], bad)
		}
		take := cands[next:min(next+need, len(cands))]
		next += len(take)
		b0, nb := blocks[lo], blocks[hi]-blocks[lo]+1
		bufs := make([][]byte, len(take))
		goods := make([][]bool, len(take))
		damages := make([]error, len(take))
		fatals := make([]error, len(take))
		var wg sync.WaitGroup
		for t, c := range take {
			pb := getBuf(nb * bsz)
			defer putBuf(pb) // blocks are handed out only until we return
			bufs[t] = *pb
			goods[t] = make([]bool, nb)
			wg.Go(func() {
				damages[t], fatals[t] = r.readBlocks(ctx, c, b0, nb, bufs[t], goods[t], nil)
			})
		}
		wg.Wait()
		for t, c := range take {
			if fatals[t] != nil {
				return fmt.Errorf("shard: reconstruct shard %d: %w", target, fatals[t])
			}
			if damages[t] != nil {
				bad.add(c, damages[t])
			}
			for j := lo; j <= hi; j++ {
				rel := blocks[j] - b0
				if count[j] < k && goods[t][rel] {
					have[j][c] = bufs[t][rel*bsz : (rel+1)*bsz]
					count[j]++
				}
			}
		}
	}
	required := make([]bool, total)
	required[target] = true
	pb := getBuf(bsz)
	defer putBuf(pb)
	blk := *pb
	for j, b := range blocks {
		shards := have[j]
		shards[target] = blk[:0]
		if err := r.enc.ReconstructSome(shards, required); err != nil {
			return fmt.Errorf("shard: reconstruct shard %d block %d: %w", target, b, err)
		}
		out(b, shards[target])
	}
	return nil
}

func (r *Reader) unrecoverable(target, block, have int, bad *badSet) error {
	var first error
	if len(bad.why) > 0 {
		first = bad.why[0]
	}
	return fmt.Errorf("shard: shard %d block %d: only %d of K=%d other blocks of the stripe readable, %d shards bad %v (M=%d), first: %v: %w",
		target, block, have, r.h.K, len(bad.idx), bad.list(), r.h.M, first, ErrUnrecoverable)
}

// Prefetch tells the backends that pack bytes [off, off+n) will be read
// soon (backend.Prefetcher), with the checksum tables of the data shards
// involved if they are not loaded yet. It is a hint: nothing is read or
// checked here, and backends that cannot prefetch are skipped. A data shard
// known to be unusable is skipped too: its reads are reconstructions, which
// a hint would not speed up much.
func (r *Reader) Prefetch(ctx context.Context, off, n int64) {
	if off < 0 || n <= 0 || off >= r.h.PackLen {
		return
	}
	n = min(n, r.h.PackLen-off)
	bs := int64(r.h.BlockSize)
	for n > 0 {
		i, so, l := firstSpan(off, n, r.h.ShardLen)
		off, n = off+l, n-l
		t := r.targets[i]
		p, ok := t.BE.(backend.Prefetcher)
		if !ok || r.sh[i].openErr != nil || r.sh[i].dead.Load() {
			continue
		}
		h := r.sh[i].hdr
		if r.sh[i].table.Load() == nil {
			p.Prefetch(ctx, t.Name, HeaderSize, h.TableLen())
		}
		b0, b1 := blockRange(so, l, r.h.BlockSize)
		p.Prefetch(ctx, t.Name, h.DataOffset()+int64(b0)*bs, int64(b1-b0+1)*bs)
	}
}
