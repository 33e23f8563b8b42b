package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/zeebo/blake3"

	"github.com/vmvault/vmvault/chunkstore/shard"
)

// Ingest pipeline: per stream, the caller's goroutine reads the stream into
// large blocks and runs the chunker over them in place (sequential by
// nature; see cdc.go) and queues each chunk, a slice of its block, to the
// Store's worker pool,
// which hashes, looks up, compresses, seals and appends it to the open pack;
// a per-stream collector reports Refs in stream order. Memory is bounded by
// the per-stream queue (2*Workers+2 chunks, which pin at most as many input
// blocks of max(4 MiB, 2*ChunkMax)), the open
// pack and MaxPacksInFlight sealed packs. Several streams may be ingested
// concurrently; they share the workers and the open pack.

// Ref locates one chunk of an ingested stream.
type Ref struct {
	ID     ID
	Offset int64 // in the stream
	Length int
}

// Stats count what an ingest did. Stored bytes are blob bytes (frame
// tables, compression, GCM overhead), excluding pack trailers and parity.
type Stats struct {
	BytesIn     int64
	Chunks      int64
	NewChunks   int64
	NewBytes    int64 // raw bytes of new chunks
	StoredBytes int64 // stored bytes of new chunks
}

func (s *Stats) add(o Stats) {
	s.BytesIn += o.BytesIn
	s.Chunks += o.Chunks
	s.NewChunks += o.NewChunks
	s.NewBytes += o.NewBytes
	s.StoredBytes += o.StoredBytes
}

// pendingChunk is a chunk appended to a pack that is not yet committed.
type pendingChunk struct {
	pack *packBuilder
	e    packEntry
}

// chunkJob is one chunk travelling through the worker pool.
type chunkJob struct {
	data  []byte   // a slice of blk
	blk   *inBlock // released by the collector
	off   int64
	id    ID
	isNew bool
	store int // stored bytes when new
	err   error
	done  chan struct{}
}

// workerState is one worker's reusable scratch.
type workerState struct {
	h     *blake3.Hasher
	work  []byte
	blob  blobParts
	parts [][]byte // head + frames, for addBlob
}

func (s *Store) newHasher() *blake3.Hasher {
	h, err := blake3.NewKeyed(s.keys.idKey[:])
	if err != nil {
		panic(err) // only for a key that is not 32 bytes
	}
	return h
}

// ChunkID returns the keyed ID of data (what Put and Ingest compute). A
// remote agent that chunks on its own needs the same key: IDKey.
func (s *Store) ChunkID(data []byte) ID {
	h := s.newHasher()
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	return id
}

// IDKey returns the repository's chunk ID key (secret in an encrypted
// repository: give it only to trusted agents).
func (s *Store) IDKey() [32]byte { return s.keys.idKey }

func (s *Store) startWorkers() {
	s.jobs = make(chan *chunkJob, s.opts.Workers)
	for range s.opts.Workers {
		s.workerWG.Add(1)
		go func() {
			defer s.workerWG.Done()
			ws := &workerState{h: s.newHasher()}
			for j := range s.jobs {
				s.process(j, ws)
				close(j.done)
			}
		}()
	}
}

func (s *Store) stopWorkers() {
	if s.jobs != nil {
		close(s.jobs)
		s.workerWG.Wait()
	}
}

// process hashes a chunk and, unless known, encodes and appends it.
func (s *Store) process(j *chunkJob, ws *workerState) {
	ws.h.Reset()
	ws.h.Write(j.data)
	ws.h.Sum(j.id[:0])
	known, err := s.known(j.id)
	if err != nil || known {
		j.err = err
		return
	}
	s.codec.encodeParts(&ws.blob, j.id, j.data, &ws.work)
	ws.parts = append(append(ws.parts[:0], ws.blob.head), ws.blob.parts...)
	j.isNew, j.err = s.addBlob(j.id, len(j.data), ws.parts, ws.blob.size, false)
	j.store = ws.blob.size
}

// known reports whether a chunk is stored or pending, recording it in the
// GC touched-set (a dedup hit must keep its chunk alive).
func (s *Store) known(id ID) (bool, error) {
	s.packMu.Lock()
	_, ok := s.pending[id]
	s.packMu.Unlock()
	if ok {
		return true, nil
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	ok, err := s.idx.has(id)
	if ok {
		s.touch(id)
	}
	return ok, err
}

// Has reports for each ID whether the store holds it (stored or pending in
// an unflushed pack). A remote agent sends the IDs of its chunks and uploads
// only the missing ones with Put.
func (s *Store) Has(ctx context.Context, ids []ID) ([]bool, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	out := make([]bool, len(ids))
	s.packMu.Lock()
	for i, id := range ids {
		_, out[i] = s.pending[id]
	}
	s.packMu.Unlock()
	pend := append([]bool(nil), out...)
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.idx.hasMany(ids, out); err != nil {
		return nil, err
	}
	for i, id := range ids {
		if out[i] && !pend[i] {
			s.touch(id)
		}
	}
	return out, nil
}

// Put stores one pre-chunked piece of data. When id is not the zero ID it
// must equal the computed ID (ErrCorrupt otherwise: a corrupted upload or a
// client with another ID key). It returns the ID and whether the chunk was
// new. Like Ingest, the chunk is durable only after Flush.
func (s *Store) Put(ctx context.Context, id ID, data []byte) (ID, bool, error) {
	if s.isClosed() {
		return ID{}, false, ErrClosed
	}
	if len(data) > maxChunkRaw {
		return ID{}, false, fmt.Errorf("chunkstore: put: chunk of %d bytes exceeds %d", len(data), maxChunkRaw)
	}
	got := s.ChunkID(data)
	if id != (ID{}) && id != got {
		return got, false, fmt.Errorf("chunkstore: put: %w: data hashes to %s, not %s", ErrCorrupt, got, id)
	}
	known, err := s.known(got)
	if err != nil || known {
		return got, false, err
	}
	var work []byte
	blob, _ := s.codec.encode(nil, got, data, &work)
	added, err := s.addBlob(got, len(data), [][]byte{blob}, len(blob), false)
	return got, added, err
}

// addBlob appends a new chunk's blob to the open pack unless it is already
// pending or (unless repack) indexed: another stream stored it meanwhile.
// It seals the pack when it reaches PackSize.
func (s *Store) addBlob(id ID, raw int, blob [][]byte, size int, repack bool) (bool, error) {
	s.packMu.Lock()
	if s.writeErr != nil {
		err := s.writeErr
		s.packMu.Unlock()
		return false, err
	}
	if _, ok := s.pending[id]; ok {
		s.packMu.Unlock()
		return false, nil
	}
	if !repack {
		if ok, err := s.idx.has(id); err != nil || ok {
			s.packMu.Unlock()
			return false, err
		}
	}
	var sealed *packBuilder
	if s.open != nil && !s.open.fits(size) {
		sealed = s.sealLocked()
	}
	if s.open == nil {
		s.open = newPackBuilder(max(s.packCap(), size+packHeaderLen), s.keys.aead != nil)
	}
	e := s.open.add(id, raw, blob)
	s.pending[id] = &pendingChunk{pack: s.open, e: e}
	if len(s.open.buf) >= s.cfg.PackSize {
		if sealed != nil {
			// Two packs in one call only when a blob did not fit; launch
			// the first now.
			s.packMu.Unlock()
			s.launchWrite(sealed)
			s.packMu.Lock()
		}
		sealed = s.sealLocked()
	}
	s.packMu.Unlock()
	if sealed != nil {
		s.launchWrite(sealed)
	}
	return true, nil
}

// packCap is the buffer capacity of a new pack: the target plus one
// maximal blob, so appends never reallocate (pending readers slice it).
func (s *Store) packCap() int {
	maxBlob := s.cfg.Chunker.Max + maxTableLen(int64(s.cfg.Chunker.Max), s.cfg.FrameSize) +
		numFrames(int64(s.cfg.Chunker.Max), s.cfg.FrameSize)*sealOverhead
	return s.cfg.PackSize + maxBlob + 64<<10 // + room for the trailer
}

// sealLocked detaches the open pack, appends its trailer and registers it
// as in flight. Called with packMu held.
func (s *Store) sealLocked() *packBuilder {
	p := s.open
	s.open = nil
	p.seal(s.keys.aead)
	s.inflight[p.id] = make(chan struct{})
	s.packWG.Add(1)
	return p
}

// launchWrite writes a sealed pack in the background, at most
// MaxPacksInFlight at a time: a full semaphore blocks the worker (and so
// the ingest), which is the back pressure that bounds memory.
func (s *Store) launchWrite(p *packBuilder) {
	s.writeSem <- struct{}{}
	go func() {
		defer func() { <-s.writeSem }()
		s.writePack(p)
	}()
}

// writePack: pending mark (synced) -> all shards durable -> index commit ->
// the chunks leave the pending map.
func (s *Store) writePack(p *packBuilder) {
	defer s.packWG.Done()
	ctx := context.Background() // one stream's cancellation must not fail a shared pack
	err := s.idx.markPending(p.id)
	if err == nil {
		err = shard.Write(ctx, s.targets(p.id), p.id, s.params, p.buf)
		if err == nil {
			testHookAfterShards(p.id)
			err = s.idx.commitPack(p.id, p.entries)
		}
		if err != nil {
			// shard.Write deleted what it wrote; the pending mark is
			// cleaned up now or, if this fails too, at the next Open.
			s.deletePackShards(ctx, p.id)
			s.idx.clearPending(p.id)
		}
	}
	s.packMu.Lock()
	if err != nil && s.writeErr == nil {
		s.writeErr = fmt.Errorf("chunkstore: write pack %s: %w", p.id, err)
		s.opts.Logf("%v", s.writeErr)
	}
	for _, e := range p.entries {
		if pc, ok := s.pending[e.ID]; ok && pc.pack == p {
			delete(s.pending, e.ID)
		}
	}
	done := s.inflight[p.id]
	delete(s.inflight, p.id)
	s.packMu.Unlock()
	p.release()
	close(done)
}

// testHookAfterShards lets the crash test widen the window between the
// shard writes and the index commit.
var testHookAfterShards = func(PackID) {}

// Flush seals the open pack and waits until every pack sealed so far is
// durable and indexed. Chunks reported by Ingest/Put before Flush are
// durable once it returns nil. A failed pack write is sticky: Flush (and
// later ingest) keep returning it until the Store is reopened, because refs
// handed out for the lost chunks must not be committed by the caller.
func (s *Store) Flush(ctx context.Context) error {
	s.packMu.Lock()
	var p *packBuilder
	if s.open != nil && len(s.open.entries) > 0 {
		p = s.sealLocked()
	}
	waits := make([]chan struct{}, 0, len(s.inflight))
	for _, c := range s.inflight {
		waits = append(waits, c)
	}
	s.packMu.Unlock()
	if p != nil {
		s.launchWrite(p)
	}
	for _, c := range waits {
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.packMu.Lock()
	defer s.packMu.Unlock()
	return s.writeErr
}

// ResumeWrites clears the sticky error of a failed pack write (a full
// disk, a pool that went away) so that a long-lived Store, the one a mount
// serves backups through, can take new writes once the cause is gone,
// instead of failing every later backup until it is reopened. The caller
// must be the only writer and no stream that ingested before the failure
// may still flush (their refs may name chunks of the lost pack): call it
// at the start of a backup, not in the middle of one. It fails while packs
// are being written or the open pack holds chunks.
func (s *Store) ResumeWrites() error {
	s.packMu.Lock()
	defer s.packMu.Unlock()
	if s.writeErr == nil {
		return nil
	}
	if len(s.inflight) > 0 || (s.open != nil && len(s.open.entries) > 0) {
		return fmt.Errorf("chunkstore: cannot resume writes while packs are being written (after %w)", s.writeErr)
	}
	s.opts.Logf("chunkstore: resuming writes after: %v", s.writeErr)
	s.writeErr = nil
	return nil
}

// inBlock is a buffer of stream input. The chunker finds boundaries in it
// in place and the chunks travel to the workers as slices of it, so a byte
// of input is copied once (by the reader) on its way to the hasher and the
// compressor. refs counts the ingest loop (while it fills the block) and
// the chunks not yet collected.
type inBlock struct {
	buf  []byte
	refs atomic.Int32
	// caller marks a caller's buffer (IngestBytes): never pooled.
	caller bool
}

// blockSize is the input block size: several chunks per block, and room for
// the partial chunk carried over from the previous block (< Chunker.Max)
// plus a large read.
func (s *Store) blockSize() int { return max(4<<20, 2*s.cfg.Chunker.Max) }

func (s *Store) getBlock() *inBlock {
	b, ok := s.blocks.Get().(*inBlock)
	if !ok {
		b = &inBlock{buf: make([]byte, s.blockSize())}
	}
	b.refs.Store(1)
	return b
}

func (s *Store) releaseBlock(b *inBlock) {
	if b.refs.Add(-1) == 0 && !b.caller {
		s.blocks.Put(b)
	}
}

// Ingest chunks r, stores new chunks and calls fn (if not nil) for every
// chunk in stream order. The chunks are durable after Flush.
func (s *Store) Ingest(ctx context.Context, r io.Reader, fn func(Ref)) (Stats, error) {
	if err := s.canIngest(); err != nil {
		return Stats{}, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	col := s.collect(ctx, cancel, fn)
	var off int64
	var err error
	var cs cdcState
	blk := s.getBlock()
	start, fill := 0, 0 // the chunk in progress is blk.buf[start:fill]
	eof := false
	for {
		if e := context.Cause(ctx); e != nil {
			err = e
			break
		}
		n := s.cdc.next(blk.buf[start:fill], &cs, eof)
		if n == 0 {
			if eof {
				break
			}
			if fill == len(blk.buf) {
				// Carry the partial chunk (< Chunker.Max) to a new block.
				nb := s.getBlock()
				fill = copy(nb.buf, blk.buf[start:fill])
				s.releaseBlock(blk)
				blk, start = nb, 0
			}
			k, rerr := io.ReadFull(r, blk.buf[fill:])
			fill += k
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				eof = true
			} else if rerr != nil {
				err = fmt.Errorf("chunkstore: ingest: %w", rerr)
				break
			}
			continue
		}
		blk.refs.Add(1)
		j := &chunkJob{data: blk.buf[start : start+n : start+n], blk: blk, off: off, done: make(chan struct{})}
		start += n
		off += int64(n)
		col.queue <- j
		if !s.submit(j) {
			err = ErrClosed
			break
		}
	}
	s.releaseBlock(blk)
	return col.finish(err)
}

// IngestBytes is Ingest of a stream held in memory: it chunks data in
// place, with no copy into the store's input blocks, and returns only when
// every chunk is processed, so the caller may reuse data afterwards.
// Boundaries are the same as Ingest's of the same bytes.
func (s *Store) IngestBytes(ctx context.Context, data []byte, fn func(Ref)) (Stats, error) {
	if err := s.canIngest(); err != nil {
		return Stats{}, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	col := s.collect(ctx, cancel, fn)
	blk := &inBlock{buf: data, caller: true}
	blk.refs.Store(1)
	var cs cdcState
	var err error
	for start := 0; start < len(data); {
		if e := context.Cause(ctx); e != nil {
			err = e
			break
		}
		n := s.cdc.next(data[start:], &cs, true)
		blk.refs.Add(1)
		j := &chunkJob{data: data[start : start+n : start+n], blk: blk, off: int64(start), done: make(chan struct{})}
		start += n
		col.queue <- j
		if !s.submit(j) {
			err = ErrClosed
			break
		}
	}
	return col.finish(err)
}

// canIngest says why a stream cannot be ingested, if it cannot.
func (s *Store) canIngest() error {
	if s.isClosed() {
		return ErrClosed
	}
	if s.cdc == nil {
		return fmt.Errorf("chunkstore: ingest: chunker polynomial %s has degree %d (want 9..53)",
			s.cfg.Chunker.Polynomial, s.cfg.polynomial().Deg())
	}
	return nil
}

// collector receives an ingest's jobs in stream order, waits for each, adds
// up the stats, calls fn and cancels the ingest at the first failure.
type collector struct {
	queue chan *chunkJob
	wg    sync.WaitGroup
	st    Stats
	err   error
}

func (s *Store) collect(ctx context.Context, cancel context.CancelCauseFunc, fn func(Ref)) *collector {
	c := &collector{queue: make(chan *chunkJob, 2*s.opts.Workers+2)}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for j := range c.queue {
			<-j.done
			if j.err != nil && c.err == nil {
				c.err = j.err
				cancel(j.err)
			}
			if c.err == nil {
				c.st.Chunks++
				c.st.BytesIn += int64(len(j.data))
				if j.isNew {
					c.st.NewChunks++
					c.st.NewBytes += int64(len(j.data))
					c.st.StoredBytes += int64(j.store)
				}
				if fn != nil {
					fn(Ref{ID: j.id, Offset: j.off, Length: len(j.data)})
				}
			}
			s.releaseBlock(j.blk)
		}
	}()
	return c
}

// finish ends the job stream and waits for every job: after it returns no
// worker touches the ingest's input any more.
func (c *collector) finish(err error) (Stats, error) {
	close(c.queue)
	c.wg.Wait()
	if c.err != nil {
		return c.st, c.err
	}
	return c.st, err
}

// submit hands a job to the workers; false if the store closed.
func (s *Store) submit(j *chunkJob) (ok bool) {
	defer func() {
		if recover() != nil { // send on the closed jobs channel after Close
			j.err = ErrClosed
			close(j.done)
			ok = false
		}
	}()
	s.jobs <- j
	return true
}

// Ingester feeds one stream to Ingest piece by piece (io.Writer), for
// callers that produce a segment's bytes in pieces. Chunk boundaries do not
// depend on how the bytes are split into Writes.
type Ingester struct {
	pw   *io.PipeWriter
	done chan struct{}
	st   Stats
	err  error
}

// NewIngester starts an ingest that runs until Close.
func (s *Store) NewIngester(ctx context.Context, fn func(Ref)) *Ingester {
	pr, pw := io.Pipe()
	in := &Ingester{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		in.st, in.err = s.Ingest(ctx, pr, fn)
		pr.CloseWithError(in.err) // unblock a writer after a failure
	}()
	return in
}

// Write feeds p to the chunker.
func (in *Ingester) Write(p []byte) (int, error) {
	n, err := in.pw.Write(p)
	if err != nil {
		<-in.done
		if in.err != nil {
			return n, in.err
		}
	}
	return n, err
}

// Close ends the stream and returns the ingest's stats.
func (in *Ingester) Close() (Stats, error) {
	in.pw.Close()
	<-in.done
	return in.st, in.err
}

// Abort ends the stream with an error.
func (in *Ingester) Abort(err error) {
	if err == nil {
		err = errors.New("chunkstore: ingest aborted")
	}
	in.pw.CloseWithError(err)
	<-in.done
}
