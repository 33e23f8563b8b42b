package chunkstore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minlz"
)

// Compression methods of a frame (the method byte of the frame table).
// zstd frames are standard zstd frames, whichever implementation wrote
// them: the C library (cgo builds, compress_cgo.go) or klauspost/compress
// (builds without cgo, compress_nocgo.go). s2 is klauspost's Snappy
// extension and MinLZ (minio/minlz) its successor, both block format.
//
// Why four: measured here per core on 400 MB of /usr/lib in 64 KiB frames
// (chunkstore BenchmarkComponents, 2026-11-26): klauspost zstd "fastest"
// 250 MB/s (ratio 0.506), C zstd level 1 380 MB/s (0.496), C zstd -3
// 525 MB/s (0.580), s2 688 MB/s (0.597); decoding C 1.1 GB/s, klauspost
// 0.77-0.93 GB/s, s2 1.7 GB/s. On 256 MB of /usr (2026-11-27, same run,
// the machine slower): s2 554 MB/s (0.573), MinLZ fastest 616 MB/s (0.562);
// decoding s2 1.17 GB/s, MinLZ 1.20. MinLZ is the default since then; s2
// repositories keep s2. The repository's method is chosen at init; every
// build decodes every method.
const (
	methodS2    = 2
	methodMinLZ = 3
)

// Compression names accepted by ParseCompression and Config.Compression.
const (
	CompressionZstd  = "zstd"
	CompressionS2    = "s2"
	CompressionMinLZ = "minlz"
	CompressionNone  = "none"
)

// Zstd levels a repository may use: negative levels are zstd's "fast"
// levels (C library only: without cgo they compress like level 1).
const (
	MinZstdLevel = -7
	MaxZstdLevel = 22
)

// ParseCompression parses "minlz", "s2", "zstd", "zstd:LEVEL" or "none" (the
// `vmvault init --compression` syntax). Level 0 means the default.
func ParseCompression(s string) (method string, level int, err error) {
	name, lv, hasLevel := strings.Cut(strings.ToLower(strings.TrimSpace(s)), ":")
	switch name {
	case CompressionZstd:
		if !hasLevel {
			return CompressionZstd, DefaultZstdLevel, nil
		}
		n, err := strconv.Atoi(lv)
		if err != nil || n == 0 || n < MinZstdLevel || n > MaxZstdLevel {
			return "", 0, fmt.Errorf("chunkstore: bad zstd level %q (want %d..-1 or 1..%d)", lv, MinZstdLevel, MaxZstdLevel)
		}
		return CompressionZstd, n, nil
	case CompressionS2, CompressionMinLZ, CompressionNone:
		if hasLevel {
			return "", 0, fmt.Errorf("chunkstore: compression %q takes no level", name)
		}
		return name, 0, nil
	}
	return "", 0, fmt.Errorf("chunkstore: unknown compression %q (want minlz, s2, zstd, zstd:LEVEL or none)", s)
}

// frameCompressor compresses one frame. Implementations are safe for
// concurrent use.
type frameCompressor interface {
	// compress returns the compressed form of src, using dst's storage when
	// it is large enough.
	compress(dst, src []byte) []byte
	method() byte
}

// zstdDecoder decodes one zstd frame into dst (len(dst) is the exact
// decoded length; dst[len(dst):cap(dst)] may be overwritten).
type zstdDecoder interface {
	decode(dst, src []byte) ([]byte, error)
	close()
}

func newFrameCompressor(method string, level, frameSize, concurrency int) (frameCompressor, error) {
	switch method {
	case CompressionZstd:
		return newZstdCompressor(level, frameSize, concurrency)
	case CompressionS2:
		return s2Compressor{}, nil
	case CompressionMinLZ:
		return minlzCompressor{}, nil
	case CompressionNone, "":
		return nil, nil
	}
	return nil, fmt.Errorf("chunkstore: unknown compression %q", method)
}

type s2Compressor struct{}

func (s2Compressor) method() byte { return methodS2 }

func (s2Compressor) compress(dst, src []byte) []byte {
	if n := s2.MaxEncodedLen(len(src)); cap(dst) < n {
		dst = make([]byte, n)
	}
	return s2.Encode(dst[:cap(dst)], src)
}

// minlzCompressor is MinLZ (minio/minlz, klauspost's successor to s2),
// block format, fastest level.
type minlzCompressor struct{}

func (minlzCompressor) method() byte { return methodMinLZ }

func (minlzCompressor) compress(dst, src []byte) []byte {
	if n := minlz.MaxEncodedLen(len(src)); cap(dst) < n {
		dst = make([]byte, n)
	}
	out, err := minlz.Encode(dst[:cap(dst)], src, minlz.LevelFastest)
	if err != nil {
		return nil // stored raw
	}
	return out
}

var errBlockLength = errors.New("decoded length mismatch")

// s2Decode and minlzDecode decode a block into dst, which must be exactly
// its length (decodeExact).
func s2Decode(dst, src []byte) error    { return decodeExact(dst, src, s2.DecodedLen, s2.Decode) }
func minlzDecode(dst, src []byte) error { return decodeExact(dst, src, minlz.DecodedLen, minlz.Decode) }

// decodeBlock decodes a frame of block method m (s2 or MinLZ) into dst.
func decodeBlock(m byte, dst, src []byte) error {
	if m == methodMinLZ {
		return minlzDecode(dst, src)
	}
	return s2Decode(dst, src)
}

// decodeExact runs a block decoder whose output must fill dst exactly: the
// length header is checked first, so a hostile block never allocates, and
// a decoder that did not write into dst is an error too.
func decodeExact(dst, src []byte, decodedLen func([]byte) (int, error), decode func(dst, src []byte) ([]byte, error)) error {
	n, err := decodedLen(src)
	if err != nil {
		return err
	}
	if n != len(dst) {
		return errBlockLength
	}
	out, err := decode(dst, src)
	if err != nil {
		return err
	}
	if len(out) != len(dst) || len(out) > 0 && &out[0] != &dst[0] {
		return errBlockLength
	}
	return nil
}

// goZstdCompressor is klauspost's pure-Go zstd encoder.
type goZstdCompressor struct{ enc *zstd.Encoder }

func newGoZstdCompressor(level, frameSize, concurrency int) (*goZstdCompressor, error) {
	el := zstd.SpeedFastest
	if level > 0 {
		el = zstd.EncoderLevelFromZstd(level)
	}
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(el),
		zstd.WithEncoderConcurrency(concurrency),
		zstd.WithEncoderCRC(false), // frames have their own CRC / GCM tag
		zstd.WithWindowSize(max(frameSize, zstd.MinWindowSize)),
		zstd.WithSingleSegment(true))
	if err != nil {
		return nil, fmt.Errorf("chunkstore: zstd: %w", err)
	}
	return &goZstdCompressor{enc: e}, nil
}

func (g *goZstdCompressor) method() byte { return methodZstd }

func (g *goZstdCompressor) compress(dst, src []byte) []byte { return g.enc.EncodeAll(src, dst[:0]) }

// goZstdDecoder is klauspost's pure-Go zstd decoder. MaxMemory bounds what
// a hostile frame can make DecodeAll allocate.
type goZstdDecoder struct{ dec *zstd.Decoder }

func newGoZstdDecoder(concurrency int) (*goZstdDecoder, error) {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(concurrency),
		zstd.WithDecoderMaxMemory(maxFrameSize),
		zstd.WithDecoderMaxWindow(maxFrameSize))
	if err != nil {
		return nil, fmt.Errorf("chunkstore: zstd: %w", err)
	}
	return &goZstdDecoder{dec: d}, nil
}

func (g *goZstdDecoder) decode(dst, src []byte) ([]byte, error) {
	return g.dec.DecodeAll(src, dst[:0])
}

func (g *goZstdDecoder) close() { g.dec.Close() }

// checkZstdFrame accepts src only if it is exactly one zstd frame whose
// window fits maxFrameSize and whose declared content size (when present)
// is want: what the C decoder may then be given without letting a hostile
// frame make it allocate a large window or run past the frame.
func checkZstdFrame(src []byte, want int) error {
	if want > maxFrameSize {
		return fmt.Errorf("zstd: frame of %d bytes exceeds the frame size limit", want)
	}
	var h zstd.Header
	if err := h.Decode(src); err != nil {
		return err
	}
	if h.Skippable || h.DictionaryID != 0 {
		return errors.New("zstd: unexpected frame kind")
	}
	if h.HasFCS && h.FrameContentSize != uint64(want) {
		return fmt.Errorf("zstd: frame declares %d bytes, want %d", h.FrameContentSize, want)
	}
	if !h.SingleSegment && h.WindowSize > maxFrameSize {
		return fmt.Errorf("zstd: window %d too large", h.WindowSize)
	}
	pos := h.HeaderSize
	for {
		if pos+3 > len(src) {
			return errors.New("zstd: truncated block header")
		}
		bh := uint32(src[pos]) | uint32(src[pos+1])<<8 | uint32(src[pos+2])<<16
		pos += 3
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		switch typ {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE
			pos++
		default:
			return errors.New("zstd: reserved block type")
		}
		if pos > len(src) {
			return errors.New("zstd: truncated block")
		}
		if last {
			break
		}
	}
	if h.HasCheckSum {
		pos += 4
	}
	if pos != len(src) {
		return fmt.Errorf("zstd: %d trailing bytes", len(src)-pos)
	}
	return nil
}
