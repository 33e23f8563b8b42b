package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Read path: a chunk's location comes from the pending map (not yet
// flushed: decoded from memory) or the index. Decoded frames live in an LRU
// keyed by (chunk, frame); a frame being decoded is registered in fflight so
// concurrent readers wait for it instead of decoding it again. A leader
// reads the stored bytes of all frames it leads with one shard ReadAt.

type frameKey struct {
	id ID
	i  int32
}

type frameCall struct {
	done    chan struct{}
	val     []byte
	err     error
	waiters int // readers waiting (guarded by rmu)
}

// Size returns the raw length of a chunk.
func (s *Store) Size(ctx context.Context, id ID) (int64, error) {
	if pc := s.pendingCopy(id, false); pc != nil {
		return int64(pc.e.Raw), nil
	}
	l, err := s.locate(id)
	if err != nil {
		return 0, err
	}
	return int64(l.Raw), nil
}

func (s *Store) locate(id ID) (location, error) {
	l, err := s.idx.lookup(id)
	if errors.Is(err, ErrNotFound) {
		return l, fmt.Errorf("chunkstore: chunk %s: %w", id, ErrNotFound)
	}
	return l, err
}

// pendingBlob is a copy of an unflushed chunk's blob.
type pendingBlob struct {
	e    packEntry
	blob []byte
}

// pendingCopy returns the blob of a pending chunk (copied under the lock,
// because the pack buffer is recycled once written), or nil.
func (s *Store) pendingCopy(id ID, withBlob bool) *pendingBlob {
	s.packMu.Lock()
	defer s.packMu.Unlock()
	pc, ok := s.pending[id]
	if !ok {
		return nil
	}
	pb := &pendingBlob{e: pc.e}
	if withBlob {
		pb.blob = append([]byte(nil), pc.pack.buf[pc.e.Offset:pc.e.Offset+uint64(pc.e.Stored)]...)
	}
	return pb
}

// Get returns the chunk's plaintext, verified (GCM per frame when
// encrypted; per-frame CRC and the keyed BLAKE3 ID otherwise).
func (s *Store) Get(ctx context.Context, id ID) ([]byte, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	if pb := s.pendingCopy(id, true); pb != nil {
		return s.decodeBlob(id, pb.blob, int64(pb.e.Stored))
	}
	for attempt := 0; ; attempt++ {
		l, err := s.locate(id)
		if err != nil {
			return nil, err
		}
		out := make([]byte, l.Raw)
		err = s.readRange(ctx, id, l, 0, out, true)
		if err != nil && attempt == 0 && errors.Is(err, backend.ErrNotFound) {
			continue // the pack may have been repacked by GC meanwhile
		}
		return out, err
	}
}

// GetRange fills p with chunk bytes [off, off+len(p)) and returns how many
// bytes it read (less than len(p) only at the chunk's end, with no error).
// Only the frames covering the range are read and decoded.
func (s *Store) GetRange(ctx context.Context, id ID, off int64, p []byte) (int, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("chunkstore: chunk %s: negative offset %d", id, off)
	}
	if pb := s.pendingCopy(id, true); pb != nil {
		b, err := s.decodeBlob(id, pb.blob, int64(pb.e.Stored))
		if err != nil {
			return 0, err
		}
		if off >= int64(len(b)) {
			return 0, nil
		}
		return copy(p, b[off:]), nil
	}
	for attempt := 0; ; attempt++ {
		l, err := s.locate(id)
		if err != nil {
			return 0, err
		}
		if off >= int64(l.Raw) || len(p) == 0 {
			return 0, nil
		}
		n := int(min(int64(len(p)), int64(l.Raw)-off))
		err = s.readRange(ctx, id, l, off, p[:n], false)
		if err != nil && attempt == 0 && errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// decodeBlob decodes a whole blob held in memory.
func (s *Store) decodeBlob(id ID, blob []byte, stored int64) ([]byte, error) {
	t, err := parseFrameTable(blob, stored)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: chunk %s: %w", id, err)
	}
	out := make([]byte, t.rawLen)
	dst := func(f int) []byte {
		o := int64(f) * int64(t.frameSize)
		return out[o : o+int64(t.rawFrameLen(f))]
	}
	if err := s.decodeFrames(id, t, blob, 0, dst, all(len(t.frames)), true); err != nil {
		return nil, err
	}
	if err := s.verifyWhole(id, t, [][]byte{out}); err != nil {
		return nil, err
	}
	return out, nil
}

func all(n int) []int {
	r := make([]int, n)
	for i := range r {
		r[i] = i
	}
	return r
}

// verifyWhole checks the keyed ID of a whole unencrypted chunk (sealed
// frames are already authenticated, bound to the ID; frames whose CRC binds
// the ID are checked as they decode).
func (s *Store) verifyWhole(id ID, t *frameTable, parts [][]byte) error {
	if t.sealed || t.crcID {
		return nil
	}
	h := s.newHasher()
	for _, p := range parts {
		h.Write(p)
	}
	var got ID
	h.Sum(got[:0])
	if got != id {
		return fmt.Errorf("chunkstore: chunk %s: %w: content hashes to %s", id, ErrCorrupt, got)
	}
	return nil
}

// readRange fills p with raw bytes [off, off+len(p)) of chunk id at l,
// using and filling the frame cache.
func (s *Store) readRange(ctx context.Context, id ID, l location, off int64, p []byte, whole bool) error {
	fs := s.cfg.FrameSize
	nf := numFrames(int64(l.Raw), fs)
	if len(p) == 0 {
		return nil
	}
	f0, f1 := frameRange(off, int64(len(p)), fs)
	if f1 >= nf {
		return fmt.Errorf("chunkstore: chunk %s: %w: range beyond %d frames", id, ErrCorrupt, nf)
	}
	got := make([][]byte, f1-f0+1)
	var lead []int
	var lcalls []*frameCall
	type waiter struct {
		i int
		c *frameCall
	}
	var waits []waiter
	s.rmu.Lock()
	for f := f0; f <= f1; f++ {
		k := frameKey{id, int32(f)}
		if b, ok := s.frames.get(k); ok {
			got[f-f0] = b
			continue
		}
		if c, ok := s.fflight[k]; ok {
			c.waiters++
			waits = append(waits, waiter{f, c})
			continue
		}
		c := &frameCall{done: make(chan struct{})}
		s.fflight[k] = c
		lead = append(lead, f)
		lcalls = append(lcalls, c)
	}
	s.rmu.Unlock()

	if len(lead) > 0 {
		// A frame the read covers entirely decodes straight into p and is
		// not cached: a sequential reader (a restore's whole-chunk Get, a
		// mount's block fill, a .raw copy) never comes back for it, and
		// caching it would only evict the random-access working set;
		// concurrent waiters get copies. A frame the read covers in part
		// gets its own buffer (a cached frame must not pin its neighbours)
		// and is cached: the next small read is likely to want the rest.
		// A whole-chunk Get leading every frame reads the stored blob in
		// one go and checks the chunk against its ID (wholeVerify).
		vals := make([][]byte, len(lead))
		direct := make([]bool, len(lead))
		pos := make(map[int]int, len(lead))
		for i, f := range lead {
			n := frameRawLen(int64(l.Raw), fs, f)
			start := int64(f) * int64(fs)
			if start >= off && start+int64(n) <= off+int64(len(p)) {
				vals[i], direct[i] = p[start-off:start-off+int64(n)], true
			} else {
				vals[i] = make([]byte, n, n+zstdSlack) // spare room: see decodeFrame
			}
			pos[f] = i
		}
		err := s.loadFrames(ctx, id, l, lead, whole && len(lead) == nf, func(f int) []byte { return vals[pos[f]] })
		s.rmu.Lock()
		for i, f := range lead {
			k := frameKey{id, int32(f)}
			c := lcalls[i]
			switch {
			case err != nil:
				c.err = err
			case direct[i]:
				if c.waiters > 0 {
					c.val = append([]byte(nil), vals[i]...)
				}
			default:
				c.val = vals[i]
				got[f-f0] = vals[i]
				s.frames.add(k, vals[i], int64(len(vals[i])))
			}
			delete(s.fflight, k)
			close(c.done)
		}
		s.rmu.Unlock()
		if err != nil {
			return err
		}
	}
	for _, w := range waits {
		select {
		case <-w.c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if w.c.err != nil {
			return w.c.err
		}
		got[w.i-f0] = w.c.val
	}
	// Copy out of the (immutable) frame buffers; frames decoded in place
	// (nil here) are already there.
	for i, b := range got {
		if b == nil {
			continue
		}
		start := int64(f0+i) * int64(fs)
		lo := max(off, start) - start
		hi := min(off+int64(len(p)), start+int64(len(b))) - start
		copy(p[start+lo-off:], b[lo:hi])
	}
	return nil
}

// loadFrames reads and decodes the given frames (ascending) of a stored
// chunk into dst(f). wholeVerify: lead is every frame, so the stored blob
// is read in one go and an unencrypted chunk is checked against its ID.
func (s *Store) loadFrames(ctx context.Context, id ID, l location, lead []int, wholeVerify bool, dst func(f int) []byte) error {
	testHookLoadFrames()
	var t *frameTable
	var stored []byte // bytes from the blob's offset base
	var base int64
	if wholeVerify {
		blob, release, err := s.viewPack(ctx, l.Pack, int64(l.Offset), int(l.Stored))
		defer release()
		if err != nil {
			return fmt.Errorf("chunkstore: chunk %s: %w", id, err)
		}
		if t, err = parseFrameTable(blob, int64(l.Stored)); err != nil {
			return fmt.Errorf("chunkstore: chunk %s: %w", id, err)
		}
		stored, base = blob, 0
		s.rmu.Lock()
		s.tables.add(id, t, 1)
		s.rmu.Unlock()
	} else {
		var err error
		if t, err = s.frameTable(ctx, id, l); err != nil {
			return err
		}
		a, b := t.frames[lead[0]], t.frames[lead[len(lead)-1]]
		base = a.off
		var release func()
		stored, release, err = s.viewPack(ctx, l.Pack, int64(l.Offset)+base, int(b.off+int64(b.stored)-a.off))
		defer release()
		if err != nil {
			return fmt.Errorf("chunkstore: chunk %s: %w", id, err)
		}
	}
	if t.rawLen != int64(l.Raw) || t.frameSize != s.cfg.FrameSize {
		return fmt.Errorf("chunkstore: chunk %s: %w: frame table disagrees with index", id, ErrCorrupt)
	}
	if err := s.decodeFrames(id, t, stored, base, dst, lead, wholeVerify); err != nil {
		return err
	}
	if wholeVerify {
		parts := make([][]byte, len(lead))
		for i, f := range lead {
			parts[i] = dst(f)
		}
		return s.verifyWhole(id, t, parts)
	}
	return nil
}

// testHookLoadFrames lets TestSingleFlight hold a leader so that the
// other readers certainly overlap with it.
var testHookLoadFrames = func() {}

// frameTable returns a chunk's parsed frame table, reading the blob's head.
func (s *Store) frameTable(ctx context.Context, id ID, l location) (*frameTable, error) {
	s.rmu.Lock()
	t, ok := s.tables.get(id)
	s.rmu.Unlock()
	if ok && t.storedLen() == int64(l.Stored) && t.rawLen == int64(l.Raw) {
		return t, nil // (a chunk stored anew after GC may differ: re-read)
	}
	head := make([]byte, min(int64(l.Stored), int64(maxTableLen(int64(l.Raw), s.cfg.FrameSize))))
	if err := s.readPack(ctx, l.Pack, head, int64(l.Offset)); err != nil {
		return nil, fmt.Errorf("chunkstore: chunk %s: %w", id, err)
	}
	t, err := parseFrameTable(head, int64(l.Stored))
	if err != nil {
		return nil, fmt.Errorf("chunkstore: chunk %s: %w", id, err)
	}
	s.rmu.Lock()
	s.tables.add(id, t, 1)
	s.rmu.Unlock()
	return t, nil
}

// decodeFrames decodes frames (ascending) whose stored bytes are in stored
// (stored[0] is blob offset base); dst(f) is where frame f's plaintext
// goes. adjacent: frames are consecutive and dst(f+1) directly follows
// dst(f) in one buffer; otherwise each dst(f) is a buffer of its own whose
// spare capacity may be overwritten. Frames are decoded in parallel when
// there are several, each goroutine taking a contiguous run in ascending
// order, so that a frame may use the following frame's destination
// (decoded after it by the same goroutine) as the decoder's slack.
func (s *Store) decodeFrames(id ID, t *frameTable, stored []byte, base int64, dst func(f int) []byte, frames []int, adjacent bool) error {
	// run decodes frames[lo:hi].
	run := func(lo, hi int) error {
		for k := lo; k < hi; k++ {
			f := frames[k]
			fe := t.frames[f]
			src := stored[fe.off-base : fe.off-base+int64(fe.stored)]
			d := dst(f)
			if adjacent {
				room := 0
				if k+1 < hi {
					room = t.rawFrameLen(frames[k+1])
				}
				d = d[: len(d) : len(d)+min(room, cap(d)-len(d))]
			}
			if err := s.codec.decodeFrame(d, id, t, f, src); err != nil {
				return err
			}
		}
		return nil
	}
	par := 1
	if len(frames) >= 4 {
		par = min(s.opts.Workers, len(frames)/2)
	}
	if par <= 1 {
		return run(0, len(frames))
	}
	var wg sync.WaitGroup
	errs := make([]error, par)
	for w := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = run(w*len(frames)/par, (w+1)*len(frames)/par)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
