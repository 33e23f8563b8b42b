package chunkstore

import (
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Chunk stored form ("blob"): a chunk is cut into frames of FrameSize raw
// bytes (the last one shorter), each compressed-or-raw and, in an encrypted
// repository, sealed on its own, so that a 4 KiB read decodes one frame
// instead of the whole ~1 MiB chunk. A small frame table in front says where
// each frame starts:
//
//	byte 0     version (1)
//	byte 1     flags: bit0 sealed (AES-256-GCM per frame), bit1 CRC per frame,
//	           bit2 the CRC also covers the chunk ID and frame index
//	byte 2     log2(frame size), 12..20
//	uvarint    raw length of the chunk
//	per frame  uvarint stored length, byte method (0 raw, 1 zstd, 2 s2, 3 minlz),
//	           [u32 LE CRC-32C of the frame's plaintext, if bit1]
//	frames     concatenated; a sealed frame is nonce(12) || GCM(payload)
//
// The number of frames follows from the raw length. Integrity: a sealed
// frame's GCM additional data binds the chunk ID, the frame index, the frame
// count, the raw length, the method and the frame size, so a frame cannot be
// moved, swapped or reinterpreted and a lying table fails authentication.
// Unsealed frames carry a CRC-32C of their plaintext (cheap, catches damage
// the shard checksums could not, e.g. a bug). Since 2026-11-26 that CRC
// starts with the chunk ID and the frame index (bit2), so a frame read for
// the wrong chunk or at the wrong place fails as a sealed one would, and a
// whole-chunk Get no longer re-hashes the chunk with BLAKE3 (0.5 s of CPU
// per GB here); blobs without bit2 still get the whole-chunk BLAKE3 check.
// The table itself is not encrypted: it reveals per-64 KiB compressed sizes,
// about what restic's blob sizes reveal.

const (
	blobVersion  = 1
	flagSealed   = 1 << 0
	flagCRC      = 1 << 1
	flagCRCID    = 1 << 2
	methodRaw    = 0
	methodZstd   = 1
	minFrameSize = 4 << 10
	maxFrameSize = 1 << 20
	nonceLen     = 12
	tagLen       = 16
	sealOverhead = nonceLen + tagLen
	// maxChunkRaw bounds the raw length a table may claim (the chunker's
	// max is at most 64 MiB, see Config.validate).
	maxChunkRaw = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// frameCRC is the CRC-32C of frame i of chunk id with plaintext raw, bound
// to the chunk and the frame's place (flagCRCID).
func frameCRC(id ID, i int, raw []byte) uint32 {
	var pre [36]byte
	copy(pre[:], id[:])
	binary.LittleEndian.PutUint32(pre[32:], uint32(i))
	return crc32.Update(crc32c(pre[:]), castagnoli, raw)
}

// frameEntry locates one frame inside a blob.
type frameEntry struct {
	off    int64 // from the start of the blob
	stored int
	method byte
	crc    uint32
}

// frameTable is a parsed blob head.
type frameTable struct {
	rawLen    int64
	frameSize int
	sealed    bool
	hasCRC    bool
	crcID     bool // CRCs cover the chunk ID and frame index
	hdrLen    int
	frames    []frameEntry
}

// rawFrameLen is the plaintext length of frame i.
func (t *frameTable) rawFrameLen(i int) int {
	return frameRawLen(t.rawLen, t.frameSize, i)
}

// storedLen is the blob length the table describes.
func (t *frameTable) storedLen() int64 {
	if len(t.frames) == 0 {
		return int64(t.hdrLen)
	}
	f := t.frames[len(t.frames)-1]
	return f.off + int64(f.stored)
}

// numFrames is ceil(rawLen / frameSize).
func numFrames(rawLen int64, frameSize int) int {
	return int((rawLen + int64(frameSize) - 1) / int64(frameSize))
}

func frameRawLen(rawLen int64, frameSize, i int) int {
	start := int64(i) * int64(frameSize)
	return int(min(rawLen-start, int64(frameSize)))
}

// frameRange returns the frames [first, last] covering raw range
// [off, off+n), n > 0.
func frameRange(off, n int64, frameSize int) (first, last int) {
	return int(off / int64(frameSize)), int((off + n - 1) / int64(frameSize))
}

// maxTableLen bounds the head of a blob holding rawLen bytes: what a reader
// must fetch to parse the frame table without knowing it.
func maxTableLen(rawLen int64, frameSize int) int {
	return 3 + binary.MaxVarintLen64 + numFrames(rawLen, frameSize)*(binary.MaxVarintLen32+1+4)
}

// parseFrameTable parses the frame table at the start of head. storedLen is
// the blob's full length when known (from the index), or -1. Hostile input
// gives an error wrapping ErrCorrupt, never a panic or an allocation larger
// than len(head) allows.
func parseFrameTable(head []byte, storedLen int64) (*frameTable, error) {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("chunkstore: frame table: %w: %s", ErrCorrupt, fmt.Sprintf(f, a...))
	}
	if len(head) < 4 {
		return nil, bad("short (%d bytes)", len(head))
	}
	if head[0] != blobVersion {
		return nil, bad("unknown version %d", head[0])
	}
	flags := head[1]
	// The writer sets either sealed or the CRC bits, never both.
	if flags&^(flagSealed|flagCRC|flagCRCID) != 0 || (flags&flagCRCID != 0 && flags&flagCRC == 0) ||
		(flags&flagSealed != 0 && flags&flagCRC != 0) {
		return nil, bad("unknown flags %#x", flags)
	}
	shift := int(head[2])
	if shift < bits.Len(minFrameSize)-1 || shift > bits.Len(maxFrameSize)-1 {
		return nil, bad("bad frame size shift %d", shift)
	}
	t := &frameTable{frameSize: 1 << shift, sealed: flags&flagSealed != 0, hasCRC: flags&flagCRC != 0, crcID: flags&flagCRCID != 0}
	pos := 3
	rl, n := binary.Uvarint(head[pos:])
	if n <= 0 || rl > maxChunkRaw {
		return nil, bad("bad raw length")
	}
	pos += n
	t.rawLen = int64(rl)
	nf := numFrames(t.rawLen, t.frameSize)
	// Each frame needs at least 2 table bytes: refuse before allocating.
	if nf*2 > len(head)-pos {
		return nil, bad("table truncated: %d frames in %d bytes", nf, len(head)-pos)
	}
	t.frames = make([]frameEntry, nf)
	for i := range t.frames {
		sl, n := binary.Uvarint(head[pos:])
		if n <= 0 {
			return nil, bad("frame %d: truncated", i)
		}
		pos += n
		if pos >= len(head) {
			return nil, bad("frame %d: truncated", i)
		}
		m := head[pos]
		pos++
		raw := t.rawFrameLen(i)
		over := 0
		if t.sealed {
			over = sealOverhead
		}
		switch m {
		case methodRaw:
			if sl != uint64(raw+over) {
				return nil, bad("frame %d: raw frame of %d bytes stored as %d", i, raw, sl)
			}
		case methodZstd, methodS2, methodMinLZ:
			// A sealed frame holds at least its nonce and tag.
			if sl <= uint64(over) || sl > uint64(raw+over) {
				return nil, bad("frame %d: bad stored length %d", i, sl)
			}
		default:
			return nil, bad("frame %d: unknown method %d", i, m)
		}
		t.frames[i] = frameEntry{stored: int(sl), method: m}
		if t.hasCRC {
			if pos+4 > len(head) {
				return nil, bad("frame %d: truncated", i)
			}
			t.frames[i].crc = binary.LittleEndian.Uint32(head[pos:])
			pos += 4
		}
	}
	t.hdrLen = pos
	off := int64(pos)
	for i := range t.frames {
		t.frames[i].off = off
		off += int64(t.frames[i].stored)
	}
	if storedLen >= 0 && off != storedLen {
		return nil, bad("frames end at %d, blob is %d bytes", off, storedLen)
	}
	return t, nil
}

// codec turns chunks into blobs and back. It is safe for concurrent use
// (the compressors, decoders and cipher.AEAD are).
type codec struct {
	frameSize int
	shift     byte
	comp      frameCompressor // nil: never compress
	zdec      zstdDecoder
	aead      cipher.AEAD  // nil: unencrypted
	scratch   sync.Pool    // *[]byte of scratchLen
	decoded   atomic.Int64 // frames decoded (tests check single-flight)
}

// scratchLen fits a sealed frame of maxFrameSize and the worst-case
// compressed size of one (zstd's bound is len + len/256 + a little; s2's
// is below len + len/6 + 32 only for incompressible input, where s2 still
// writes at most that).
const scratchLen = maxFrameSize + maxFrameSize/6 + 4096

// newCodec makes the codec of a repository: compression is "minlz", "s2",
// "zstd" or "none" ("" = none), level the zstd level.
func newCodec(frameSize int, compression string, level int, aead cipher.AEAD, concurrency int) (*codec, error) {
	c := &codec{frameSize: frameSize, shift: byte(bits.Len(uint(frameSize)) - 1), aead: aead}
	var err error
	if c.comp, err = newFrameCompressor(compression, level, frameSize, concurrency); err != nil {
		return nil, err
	}
	// The decoder is needed even when this repository never compresses:
	// the blob format allows it.
	if c.zdec, err = newZstdDecoder(concurrency); err != nil {
		return nil, err
	}
	c.scratch.New = func() any { b := make([]byte, 0, scratchLen); return &b }
	return c, nil
}

func (c *codec) close() { c.zdec.close() }

// frameAAD is the GCM additional data of frame i (see the format comment).
func frameAAD(buf *[32 + 4 + 4 + 8 + 2]byte, id ID, i, n int, rawLen int64, method, shift byte) []byte {
	copy(buf[:32], id[:])
	binary.LittleEndian.PutUint32(buf[32:], uint32(i))
	binary.LittleEndian.PutUint32(buf[36:], uint32(n))
	binary.LittleEndian.PutUint64(buf[40:], uint64(rawLen))
	buf[48] = method
	buf[49] = shift
	return buf[:]
}

// encStats are per-blob compression counters.
type encStats struct {
	rawFrames, zstdFrames int // zstdFrames counts compressed frames of any method
}

// blobParts is an encoded blob in pieces, so that the pack gets the bytes
// in one copy: head (version, flags, frame size, raw length, frame table)
// and then every frame's stored bytes, each a slice of the encoder's work
// buffer (compressed or sealed frames) or of the chunk itself (raw frames
// of an unencrypted repository).
type blobParts struct {
	head  []byte
	parts [][]byte
	size  int // len(head) + the parts' lengths
	spans []frameSpan
}

// frameSpan locates a frame's stored bytes while the work buffer may still
// move: in work (inWork) or in the chunk data.
type frameSpan struct {
	inWork     bool
	start, end int
}

// encode appends the blob of chunk data (ID id) to dst and returns it.
// work is reusable scratch of the caller (one per worker).
func (c *codec) encode(dst []byte, id ID, data []byte, work *[]byte) ([]byte, encStats) {
	var bp blobParts
	st := c.encodeParts(&bp, id, data, work)
	dst = append(dst, bp.head...)
	for _, p := range bp.parts {
		dst = append(dst, p...)
	}
	return dst, st
}

// encodeParts encodes chunk data (ID id) into bp, reusing bp's slices and
// the caller's work buffer; bp's parts are valid until work or data change.
//
// A compressed frame is compressed straight into work and a raw one is not
// copied at all: the worker's blob used to be assembled twice (frames into
// work, then table and frames into one blob) before the pack's copy.
func (c *codec) encodeParts(bp *blobParts, id ID, data []byte, work *[]byte) encStats {
	var st encStats
	nf := numFrames(int64(len(data)), c.frameSize)
	flags := byte(0)
	if c.aead != nil {
		flags |= flagSealed
	} else {
		flags |= flagCRC | flagCRCID
	}
	// Room for every frame's worst case, so that compressing in place
	// never reallocates (if a compressor still needs more, it allocates
	// and the frame is appended: correct, one copy more).
	need := len(data) + nf*(c.frameSize/6+4096)
	if cap(*work) < need {
		*work = make([]byte, 0, need)
	}
	body := (*work)[:0]
	type fr struct {
		stored int
		method byte
		crc    uint32
	}
	var small [128]fr
	frs := small[:0]
	spans := bp.spans[:0]
	var aad [50]byte
	// A sealed frame is compressed into scratch: Seal writes over the
	// place in work where it would otherwise be.
	var tmp *[]byte
	if c.aead != nil {
		tmp = c.scratch.Get().(*[]byte)
		defer c.scratch.Put(tmp)
	}
	// The entropy test runs on a chunk's first frame and after a frame
	// that stayed raw: a chunk's frames are mostly of one kind, and for a
	// frame that compresses the test only costs (~5 us of a 64 KiB frame,
	// where s2 spends ~13 us on a random one and ~100 on OS data).
	prevRaw := true
	for i := range nf {
		off := i * c.frameSize
		raw := data[off : off+frameRawLen(int64(len(data)), c.frameSize, i)]
		payload, method := raw, byte(methodRaw)
		var z []byte
		if c.comp != nil && !(prevRaw && looksIncompressible(raw)) {
			if tmp != nil {
				z = c.comp.compress((*tmp)[:0], raw)
				if cap(z) <= scratchLen {
					*tmp = z[:0]
				}
			} else {
				z = c.comp.compress(body[len(body):len(body)], raw)
			}
			// Keep compression only when it saves more than 1/32: a
			// marginal gain is not worth decompressing on every read.
			// (A compressor that failed returns nil: store raw.)
			if len(z) > 0 && len(z) < len(raw)-len(raw)/32 {
				payload, method = z, c.comp.method()
			} else {
				z = nil
			}
		}
		if method != methodRaw {
			st.zstdFrames++
		} else {
			st.rawFrames++
		}
		prevRaw = method == methodRaw
		start := len(body)
		switch {
		case c.aead != nil:
			var nonce [nonceLen]byte
			mustRand(nonce[:])
			body = append(body, nonce[:]...)
			body = c.aead.Seal(body, nonce[:], payload, frameAAD(&aad, id, i, nf, int64(len(data)), method, c.shift))
			spans = append(spans, frameSpan{true, start, len(body)})
		case z != nil:
			if len(body) < cap(body) && &z[0] == &body[:len(body)+1][len(body)] {
				body = body[:len(body)+len(z)] // compressed in place
			} else {
				body = append(body, z...)
			}
			spans = append(spans, frameSpan{true, start, len(body)})
		default:
			spans = append(spans, frameSpan{false, off, off + len(raw)})
		}
		f := fr{stored: spans[len(spans)-1].end - spans[len(spans)-1].start, method: method}
		if c.aead == nil {
			f.crc = frameCRC(id, i, raw)
		}
		frs = append(frs, f)
	}
	*work = body
	head := append(bp.head[:0], blobVersion, flags, c.shift)
	head = binary.AppendUvarint(head, uint64(len(data)))
	for _, f := range frs {
		head = binary.AppendUvarint(head, uint64(f.stored))
		head = append(head, f.method)
		if c.aead == nil {
			head = binary.LittleEndian.AppendUint32(head, f.crc)
		}
	}
	bp.head, bp.spans, bp.size = head, spans, len(head)
	bp.parts = bp.parts[:0]
	for _, sp := range spans {
		src := data
		if sp.inWork {
			src = body
		}
		bp.parts = append(bp.parts, src[sp.start:sp.end])
		bp.size += sp.end - sp.start
	}
	return st
}

// zstdSlack is the spare output capacity that lets the zstd decoder use its
// fast (overrunning) copies.
const zstdSlack = 64

// decodeFrame decodes frame i of a blob whose table is t from its stored
// bytes into dst (len(dst) == t.rawFrameLen(i)). The bytes of
// dst[len(dst):cap(dst)] may be overwritten (scratch of the caller: give at
// least zstdSlack there for the fastest decoding).
func (c *codec) decodeFrame(dst []byte, id ID, t *frameTable, i int, stored []byte) error {
	c.decoded.Add(1)
	f := t.frames[i]
	if len(stored) != f.stored || len(dst) != t.rawFrameLen(i) {
		return fmt.Errorf("chunkstore: chunk %s frame %d: %w: length mismatch", id, i, ErrCorrupt)
	}
	payload := stored
	if t.sealed {
		if c.aead == nil {
			return fmt.Errorf("chunkstore: chunk %s: %w: sealed frame in an unencrypted repository", id, ErrCorrupt)
		}
		var aad [50]byte
		shift := byte(bits.Len(uint(t.frameSize)) - 1)
		a := frameAAD(&aad, id, i, len(t.frames), t.rawLen, f.method, shift)
		if f.method == methodRaw {
			out, err := c.aead.Open(dst[:0:len(dst)], stored[:nonceLen], stored[nonceLen:], a)
			if err != nil || len(out) != len(dst) {
				return fmt.Errorf("chunkstore: chunk %s frame %d: %w: authentication failed", id, i, ErrCorrupt)
			}
			return nil
		}
		tmp := c.scratch.Get().(*[]byte)
		defer c.scratch.Put(tmp)
		out, err := c.aead.Open((*tmp)[:0], stored[:nonceLen], stored[nonceLen:], a)
		if err != nil {
			return fmt.Errorf("chunkstore: chunk %s frame %d: %w: authentication failed", id, i, ErrCorrupt)
		}
		*tmp = out[:0]
		payload = out
	} else if c.aead != nil {
		// An encrypted repository only holds sealed blobs: an unsealed one
		// is a forgery attempt or damage.
		return fmt.Errorf("chunkstore: chunk %s: %w: unsealed frame in an encrypted repository", id, ErrCorrupt)
	}
	switch f.method {
	case methodRaw:
		copy(dst, payload)
	case methodZstd:
		// With zstdSlack bytes of spare capacity after the output the
		// decoder uses its fast copies (which may write up to 31 bytes past
		// the end), ~40 % faster than the bounds-exact ones it must use
		// otherwise. The caller says how much of dst's capacity may be
		// overwritten; without enough, decode into scratch and copy.
		out := dst[:0:len(dst)]
		if cap(dst)-len(dst) >= zstdSlack {
			out = dst[:0:cap(dst)]
		} else {
			sp := c.scratch.Get().(*[]byte)
			defer c.scratch.Put(sp)
			out = (*sp)[:0:cap(*sp)]
		}
		out, err := c.zdec.decode(out[:len(dst)], payload)
		if err != nil || len(out) != len(dst) {
			return fmt.Errorf("chunkstore: chunk %s frame %d: %w: decompress: %v", id, i, ErrCorrupt, err)
		}
		if len(out) > 0 && &out[0] != &dst[0] {
			copy(dst, out)
		}
	case methodS2, methodMinLZ:
		if err := decodeBlock(f.method, dst, payload); err != nil {
			return fmt.Errorf("chunkstore: chunk %s frame %d: %w: decompress: %v", id, i, ErrCorrupt, err)
		}
	}
	if t.hasCRC && !t.crcID && crc32c(dst) != f.crc || t.crcID && frameCRC(id, i, dst) != f.crc {
		return fmt.Errorf("chunkstore: chunk %s frame %d: %w: checksum mismatch", id, i, ErrCorrupt)
	}
	return nil
}

// looksIncompressible estimates the byte entropy of a strided sample of b:
// above ~7.85 bits/byte zstd would not gain the 1/32 we require, and
// skipping the attempt keeps already-compressed data (video, archives,
// encrypted volumes) near memcpy speed. Sampling 4096 bytes underestimates
// the entropy of uniform data by ~0.05 bit, hence the margin.
func looksIncompressible(b []byte) bool {
	const samples = 4096
	if len(b) < samples*2 {
		return false
	}
	stride := len(b) / samples
	var hist [256]uint32
	for i := 0; i < samples; i++ {
		hist[b[i*stride]]++
	}
	// Long runs of one value (zeros, padding) compress: quick exit.
	// The entropy is log2(samples) - sum(n*log2 n)/samples, so h > 7.85
	// is sum(n*log2 n) < samples*(log2(samples)-7.85), with n*log2 n from
	// a table: a Log2 per histogram entry cost 0.25 s per backed-up GB.
	var sum float64
	for _, n := range hist {
		if n > samples/16 {
			return false
		}
		sum += nLog2n[n]
	}
	return sum < samples*(math.Log2(samples)-7.85)
}

// nLog2n[n] is n*log2(n) for the histogram counts of looksIncompressible
// (which stop at samples/16).
var nLog2n = func() (t [4096/16 + 1]float64) {
	for n := 1; n < len(t); n++ {
		t[n] = float64(n) * math.Log2(float64(n))
	}
	return t
}()
