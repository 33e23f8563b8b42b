package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

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
}

func newSegWorker(st *chunkstore.Store) *segWorker {
	key := st.IDKey()
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic(err) // key is always 32 bytes
	}
	return &segWorker{st: st, buf: make([]byte, SegmentSize), hasher: h}
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
// from d, finds the non-zero runs, hashes them and either reuses prev (same
// hash, all chunks still present) or ingests the non-zero bytes.
func (w *segWorker) process(ctx context.Context, d io.ReaderAt, segOff int64, alloc []vdisk.Extent, prev *Segment, onRead func(int64)) (segResult, error) {
	var res segResult
	buf := w.buf
	w.runs = w.runs[:0]
	for _, e := range alloc {
		b := buf[e.Off-segOff : e.End()-segOff]
		if w.limit != nil {
			if err := w.limit(ctx, len(b)); err != nil {
				return res, err
			}
		}
		if err := readFull(d, b, e.Off); err != nil {
			return res, err
		}
		res.read += e.Len
		if onRead != nil {
			onRead(e.Len)
		}
		// Zero detection per 64 KiB-aligned virtual block.
		for off := e.Off; off < e.End(); {
			end := min((off/zeroBlock+1)*zeroBlock, e.End())
			if !isZero(buf[off-segOff : end-segOff]) {
				if n := len(w.runs); n > 0 && w.runs[n-1].off+w.runs[n-1].len == off {
					w.runs[n-1].len += end - off
				} else {
					w.runs = append(w.runs, run{off, end - off})
				}
			}
			off = end
		}
	}
	res.seg.Off = segOff
	if len(w.runs) == 0 {
		res.empty = true
		return res, nil
	}
	// The hash covers where the data is and what it is, so equal hashes
	// mean equal segment content.
	w.hasher.Reset()
	binary.LittleEndian.PutUint64(w.scratch[:8], uint64(segOff))
	w.hasher.Write(w.scratch[:8])
	for _, r := range w.runs {
		binary.LittleEndian.PutUint64(w.scratch[:8], uint64(r.off))
		binary.LittleEndian.PutUint64(w.scratch[8:], uint64(r.len))
		w.hasher.Write(w.scratch[:])
		w.hasher.Write(buf[r.off-segOff : r.off-segOff+r.len])
		res.data += r.len
	}
	var sum [32]byte
	w.hasher.Sum(sum[:0])
	res.seg.Hash = hex.EncodeToString(sum[:])

	if prev != nil && prev.Hash == res.seg.Hash {
		ok, err := allPresent(ctx, w.st, prev.Extents)
		if err != nil {
			return res, err
		}
		if ok {
			res.seg.Extents = prev.Extents
			res.reused = true
			return res, nil
		}
	}

	// Compact the non-zero runs to the front of the buffer (moving forward
	// only, so copy is safe in place) and ingest them as one stream.
	var n int64
	for _, r := range w.runs {
		if src := r.off - segOff; src != n { // a fully non-zero segment moves nothing
			copy(buf[n:], buf[src:src+r.len])
		}
		n += r.len
	}
	// Chunks of the previous backup that still match the start of the
	// stream are kept without chunking: the chunker resets at every cut,
	// so chunking from the first changed chunk's start gives exactly the
	// cuts a full re-chunk would.
	var refs []chunkstore.Ref
	var base int64
	if prev != nil {
		refs, base = w.matchingPrefix(buf[:n], prev.Extents)
		if len(refs) > 0 {
			ids := make([]chunkstore.ID, len(refs))
			for i, r := range refs {
				ids[i] = r.ID
			}
			has, err := w.st.Has(ctx, ids)
			if err != nil {
				return res, err
			}
			for _, h := range has {
				if !h {
					refs, base = nil, 0
					break
				}
			}
		}
	}
	stats, err := w.st.Ingest(ctx, bytes.NewReader(buf[base:n]), func(r chunkstore.Ref) {
		r.Offset += base
		refs = append(refs, r)
	})
	if err != nil {
		return res, err
	}
	res.stats = stats
	res.chunked = n - base
	res.seg.Extents = mapRefs(w.runs, refs)
	return res, nil
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

// matchingPrefix returns the previous chunks that hash equal to the same
// bytes of stream, from the start, and the stream offset after them. The
// last chunk of the stream is never reused: its end was the end of the
// previous stream, not a content-defined cut.
func (w *segWorker) matchingPrefix(stream []byte, prevExt []Extent) ([]chunkstore.Ref, int64) {
	chunks := prevChunks(prevExt)
	var out []chunkstore.Ref
	var off int64
	var id chunkstore.ID
	for i, c := range chunks {
		end := off + int64(c.Length)
		if i == len(chunks)-1 || c.Offset != off || end >= int64(len(stream)) {
			break
		}
		w.hasher.Reset()
		w.hasher.Write(stream[off:end])
		w.hasher.Sum(id[:0])
		if id != c.ID {
			break
		}
		out = append(out, c)
		off = end
	}
	return out, off
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
