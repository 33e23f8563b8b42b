package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"time"

	"github.com/restic/chunker"
	"github.com/zeebo/blake3"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// SegmentSize is the unit of parallelism and of incremental reuse: a
// disk's virtual space is cut into aligned 16 MiB segments, each chunked on
// its own (content-defined chunking restarts at every segment boundary).
//
// Why 16 MiB: with ~1 MiB average chunks a segment holds ~16 chunks, so the
// restart costs about one extra chunk boundary per 16 MiB (a few % of dedup
// on shifted data, nothing on in-place disk writes, which never shift); a
// changed segment re-chunks 16 MiB, not 64; and two workers need only 2 x 16
// MiB of buffers. The manifest grows by one hash per segment (6400 for 100
// GiB), negligible next to the extent map.
const SegmentSize = 16 << 20

// readPiece is the size of source reads: a segment is read in 1 MiB
// pieces, each scanned for zeros while it is in the CPU cache.
const readPiece = 1 << 20

// zeroBlock is the granularity of zero detection: allocated but all-zero
// 64 KiB blocks (free space of a fixed VHDX, zeroed blocks) are not stored.
const zeroBlock = 64 << 10

// run is a range of non-zero data in a segment, in virtual offsets.
type run struct{ off, len int64 }

// segResult is what processing one segment produced.
type segResult struct {
	seg     Segment
	empty   bool // no non-zero data: the segment is not recorded
	read    int64
	data    int64
	reused  bool
	chunked int64 // bytes that went through the chunker
	stats   chunkstore.Stats
}

// segWorker owns the buffers of one segment goroutine.
type segWorker struct {
	st      *chunkstore.Store
	buf     []byte
	hasher  *blake3.Hasher
	runs    []run
	scratch [16]byte
	limit   func(context.Context, int) error
	clock   *stageClock

	// The repository's chunker (boundary search in changed segments).
	ch         *chunker.Chunker
	cbuf       []byte
	pol        chunker.Pol
	cmin, cmax uint
	avgBits    int
}

func newSegWorker(st *chunkstore.Store, clock *stageClock) *segWorker {
	key := st.IDKey()
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic(err) // key is always 32 bytes
	}
	if clock == nil {
		clock = &stageClock{}
	}
	cp := st.Config().Chunker
	pol, _ := strconv.ParseUint(cp.Polynomial, 16, 64) // validated by chunkstore.Open
	w := &segWorker{st: st, buf: make([]byte, SegmentSize), hasher: h, clock: clock,
		pol: chunker.Pol(pol), cmin: uint(cp.Min), cmax: uint(cp.Max), avgBits: bits.Len(uint(cp.Avg)) - 1}
	return w
}

// readFull reads exactly len(p) bytes at off.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read at %d: got %d of %d bytes: %w", off, n, len(p), err)
}

// isZero reports whether b is all zeros; comparing b with itself shifted
// by one lets bytes.Equal's vectorised loop do the scan.
func isZero(b []byte) bool {
	return len(b) == 0 || (b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1]))
}

// process reads the allocated ranges alloc (inside the segment at segOff)
// from d, finds the non-zero runs and ingests their bytes, keeping every
// chunk of the previous backup's segment prev whose bytes are unchanged
// (see ingestChanged): an unchanged segment is verified chunk by chunk
// with BLAKE3 and neither chunked nor compressed.
func (w *segWorker) process(ctx context.Context, d io.ReaderAt, segOff int64, alloc []vdisk.Extent, prev *Segment, onRead func(int64)) (segResult, error) {
	var res segResult
	buf := w.buf
	w.runs = w.runs[:0]
	clk := w.clock
	t := time.Now()
	// Read in readPiece pieces and scan each for zeros right away, while it
	// is still in the CPU cache. Each piece is read where the compacted
	// stream of non-zero runs has got to (n), and a non-zero block that
	// follows a zero one in the same piece moves down over it: the stream
	// is built as it is read, instead of being compacted afterwards (that
	// copy cost ~0.1 s per GB backed up).
	var n int64
	for _, a := range alloc {
		for pOff := a.Off; pOff < a.End(); {
			pEnd := min((pOff/readPiece+1)*readPiece, a.End())
			b := buf[n : n+pEnd-pOff]
			if w.limit != nil {
				if err := w.limit(ctx, len(b)); err != nil {
					return res, err
				}
			}
			if err := readFull(d, b, pOff); err != nil {
				return res, err
			}
			res.read += pEnd - pOff
			if onRead != nil {
				onRead(pEnd - pOff)
			}
			t = since(&clk.read, t)
			// Zero detection per 64 KiB-aligned virtual block (pieces
			// end on block boundaries, so no block is split by them).
			at := n // where the next non-zero block goes
			for off := pOff; off < pEnd; {
				end := min((off/zeroBlock+1)*zeroBlock, pEnd)
				blk := b[off-pOff : end-pOff]
				if !isZero(blk) {
					if src := n + off - pOff; src != at {
						copy(buf[at:], blk) // down over a zero block (copy allows overlap)
					}
					at += end - off
					if k := len(w.runs); k > 0 && w.runs[k-1].off+w.runs[k-1].len == off {
						w.runs[k-1].len += end - off
					} else {
						w.runs = append(w.runs, run{off, end - off})
					}
				}
				off = end
			}
			n = at
			t = since(&clk.zero, t)
			pOff = pEnd
		}
	}
	res.seg.Off = segOff
	if len(w.runs) == 0 {
		res.empty = true
		return res, nil
	}
	res.data = n
	var prevExt []Extent
	if prev != nil {
		prevExt = prev.Extents
	}
	refs, err := w.ingestChanged(ctx, buf[:n], prevExt, &res)
	if err != nil {
		return res, err
	}
	t = time.Now()
	res.seg.Extents = mapRefs(w.runs, refs)
	res.reused = prev != nil && res.chunked == 0
	res.seg.Hash = w.segmentHash(segOff, res.seg.Extents)
	since(&clk.hash, t)
	return res, nil
}

// segmentHash is the keyed BLAKE3 of where a segment's data is and which
// chunks hold it (chunk IDs are keyed BLAKE3 hashes of their bytes), so
// equal hashes mean equal segment content. It costs a pass over the
// extents, not over the data: the chunk IDs were computed anyway.
func (w *segWorker) segmentHash(segOff int64, ext []Extent) string {
	w.hasher.Reset()
	var b [8 + 8 + 8 + 32]byte
	binary.LittleEndian.PutUint64(b[:8], uint64(segOff))
	w.hasher.Write(b[:8])
	for _, e := range ext {
		binary.LittleEndian.PutUint64(b[0:], uint64(e.Off))
		binary.LittleEndian.PutUint64(b[8:], uint64(e.Len))
		binary.LittleEndian.PutUint64(b[16:], uint64(e.ChunkOff))
		copy(b[24:], e.ID[:])
		w.hasher.Write(b[:])
	}
	var sum [32]byte
	w.hasher.Sum(sum[:0])
	return hex.EncodeToString(sum[:])
}

// ingestChanged ingests the stream of a changed segment and returns its
// chunk refs. The chunks of the previous backup (prevExt) are kept where
// they still match, without Rabin chunking or compression: the chunker
// resets at every cut, so a previous chunk whose bytes (verified by its
// keyed BLAKE3 ID) are at the same stream offset as before is exactly the
// chunk a full re-chunk would cut there. Between such runs the changed
// bytes are chunked from the start of the first chunk that differs, until
// a cut falls on an old chunk boundary again (resynchronisation); only
// that stretch goes to chunkstore.Ingest, whose chunker makes the same cuts
// from the same start. The result equals a full re-chunk of the stream.
func (w *segWorker) ingestChanged(ctx context.Context, stream []byte, prevExt []Extent, res *segResult) ([]chunkstore.Ref, error) {
	clk := w.clock
	t := time.Now()
	var chunks []chunkstore.Ref
	if len(prevExt) > 0 {
		// Reuse only chunks the store still holds (a repair may have
		// dropped one): one batched lookup for the segment.
		ok, err := allPresent(ctx, w.st, prevExt)
		if err != nil {
			return nil, err
		}
		if ok {
			chunks = prevChunks(prevExt)
		}
	}
	n := int64(len(stream))
	var refs []chunkstore.Ref
	var pos int64
	j := 0 // next previous chunk that may start at pos
	var id chunkstore.ID
	for pos < n {
		// Keep previous chunks while they match.
		for j < len(chunks) && chunks[j].Offset == pos {
			c := chunks[j]
			end := pos + int64(c.Length)
			// The last previous chunk was cut by the end of its stream,
			// not by content: it is only valid where the stream ends too.
			if end > n || (j == len(chunks)-1 && end != n) {
				break
			}
			w.hasher.Reset()
			w.hasher.Write(stream[pos:end])
			w.hasher.Sum(id[:0])
			if id != c.ID {
				break
			}
			refs = append(refs, c)
			clk.verified.Add(int64(c.Length))
			pos = end
			j++
		}
		t = since(&clk.reuse, t)
		if pos >= n {
			break
		}
		// Chunk from pos until a cut lands on a previous chunk boundary.
		stop := n
		for j < len(chunks) && chunks[j].Offset <= pos {
			j++
		}
		if j < len(chunks) {
			rd := bytes.NewReader(stream[pos:])
			if w.ch == nil {
				w.ch = chunker.NewWithBoundaries(rd, w.pol, w.cmin, w.cmax)
				w.cbuf = make([]byte, 0, w.cmax)
			} else {
				w.ch.ResetWithBoundaries(rd, w.pol, w.cmin, w.cmax)
			}
			w.ch.SetAverageBits(w.avgBits)
			cut := pos
			for {
				c, err := w.ch.Next(w.cbuf[:0])
				if err != nil { // io.EOF: no resynchronisation
					break
				}
				cut += int64(c.Length)
				for j < len(chunks) && chunks[j].Offset < cut {
					j++
				}
				if j < len(chunks) && chunks[j].Offset == cut && cut < n {
					stop = cut
					break
				}
			}
			t = since(&clk.chunk, t)
		}
		base := pos
		st, err := w.st.IngestBytes(ctx, stream[pos:stop], func(r chunkstore.Ref) {
			r.Offset += base
			refs = append(refs, r)
		})
		if err != nil {
			return nil, err
		}
		res.stats.BytesIn += st.BytesIn
		res.stats.Chunks += st.Chunks
		res.stats.NewChunks += st.NewChunks
		res.stats.NewBytes += st.NewBytes
		res.stats.StoredBytes += st.StoredBytes
		res.chunked += stop - pos
		t = since(&clk.ingest, t)
		pos = stop
	}
	return refs, nil
}

// prevChunks rebuilds the chunk list (in stream order) of a previous
// segment from its extents: a chunk starts at an extent with ChunkOff 0
// and continues over the following extents of the same chunk.
func prevChunks(ext []Extent) []chunkstore.Ref {
	var out []chunkstore.Ref
	var off int64
	for _, e := range ext {
		if n := len(out); n > 0 && e.ChunkOff != 0 && ChunkID(out[n-1].ID) == e.ID && e.ChunkOff == int64(out[n-1].Length) {
			out[n-1].Length += int(e.Len)
		} else {
			out = append(out, chunkstore.Ref{ID: chunkstore.ID(e.ID), Offset: off, Length: int(e.Len)})
		}
		off += e.Len
	}
	return out
}

// mapRefs turns chunk refs of the compacted stream into extents of virtual
// offsets: a chunk that spans a zero gap becomes two extents into it.
func mapRefs(runs []run, refs []chunkstore.Ref) []Extent {
	var out []Extent
	ri := 0
	var runStream int64 // stream offset where runs[ri] starts
	for _, c := range refs {
		cOff := c.Offset
		left := int64(c.Length)
		for left > 0 && ri < len(runs) {
			r := runs[ri]
			inRun := cOff - runStream
			m := min(left, r.len-inRun)
			out = append(out, Extent{Off: r.off + inRun, Len: m, ID: ChunkID(c.ID), ChunkOff: cOff - c.Offset})
			cOff += m
			left -= m
			if inRun+m == r.len {
				runStream += r.len
				ri++
			}
		}
	}
	return out
}

// allPresent reports whether every chunk the extents name is in the
// store, so reuse never carries forward a chunk a repair had to drop.
func allPresent(ctx context.Context, st *chunkstore.Store, ext []Extent) (bool, error) {
	ids := make([]chunkstore.ID, 0, len(ext))
	for i, e := range ext {
		if i > 0 && ext[i-1].ID == e.ID {
			continue
		}
		ids = append(ids, chunkstore.ID(e.ID))
	}
	has, err := st.Has(ctx, ids)
	if err != nil {
		return false, err
	}
	for _, h := range has {
		if !h {
			return false, nil
		}
	}
	return true, nil
}

// splitSegments cuts sorted allocated extents at segment boundaries and
// returns, per segment offset in ascending order, the pieces inside it.
func splitSegments(alloc []vdisk.Extent, segSize int64) (offs []int64, pieces [][]vdisk.Extent) {
	for _, e := range alloc {
		for off := e.Off; off < e.End(); {
			seg := off / segSize * segSize
			end := min(seg+segSize, e.End())
			if n := len(offs); n == 0 || offs[n-1] != seg {
				offs = append(offs, seg)
				pieces = append(pieces, nil)
			}
			pieces[len(pieces)-1] = append(pieces[len(pieces)-1], vdisk.Extent{Off: off, Len: end - off})
			off = end
		}
	}
	return offs, pieces
}
