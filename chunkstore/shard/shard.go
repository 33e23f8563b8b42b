// Package shard is the on-disk format and erasure coding of one sealed pack.
//
// It stores an opaque byte slice (a sealed pack; shard knows nothing of the
// chunks, compression or index inside it) durably as K data + M parity shard
// objects, one per pool directory, and reads back any byte range of it while
// touching only the data-shard blocks that hold the range. Parity is read only
// when a needed block is missing or fails its checksum.
//
// # Layout
//
// Striping is contiguous: with S = ShardLen = roundup(ceil(PackLen/K), BlockSize),
// data shard i holds pack bytes [i*S, (i+1)*S), zero padded at the end of the
// pack. A chunk therefore usually lives in one data shard, and a small read
// costs one pread of the covering blocks of one file. The K blocks at the same
// block index b of the K data shards form stripe b; parity shard K+j holds, at
// block b, Reed-Solomon parity (klauspost/reedsolomon, systematic) of stripe b.
// RS works byte position by byte position, so a stripe is reconstructed from
// that stripe's blocks of any K other shards, nothing more.
//
// Every shard object (data or parity) is
//
//	[0, 4096)                 header (HeaderSize bytes, see below)
//	[4096, 4096+T)            checksum table: CRC-32C of each block, u32 LE,
//	                          zero padded to a multiple of 4096 (T bytes)
//	[4096+T, 4096+T+S)        S/BlockSize blocks of BlockSize bytes
//
// The table follows the header so that one ReadAt at open fetches both for
// ordinary packs (see prefetchLen), and data blocks stay 4 KiB aligned.
// Header (all integers little endian):
//
//	0   magic "VMVSHRD1"     8   version u16 (1)   10  K u16   12  M u16
//	14  shard index u16      16  BlockSize u32     20  reserved u32 (0)
//	24  ShardLen u64         32  PackLen u64       40  packID [32]byte
//	72  table CRC-32C u32 (over the whole padded table region)
//	76..4092 reserved, must be zero
//	4092 header CRC-32C u32 over bytes [0, 4092)
//
// So every byte of a shard object is covered by a checksum: a flipped bit in
// the header, the table (or its padding) or a block is detected, and Repair
// rewrites the shard byte-identically (the format is deterministic).
//
// Shards of one pack carry identical headers except index and table CRC. A
// Reader takes the header most shards agree on (at least K must, in the right
// positions); a shard that disagrees (a stray file of another pack, a shard in
// the wrong pool) is treated like a missing one.
//
// Damage is handled per stripe, not per shard: a pack stays readable and
// repairable as long as every stripe has K good blocks, even if more than M
// shards have a bad block somewhere.
//
// # Limitations
//
//   - CRC-32C catches accidental damage, not tampering: a shard forged to
//     pass its own checksums is served by ReadAt (Verify with readData then
//     reports its stripes as InconsistentStripes). Authenticity is the
//     business of the layers above (chunk IDs are keyed hashes; AES-GCM).
//   - Write holds the pack plus M*ShardLen bytes of parity in memory;
//     Repair holds ShardLen bytes per shard it rewrites. Verify and Repair
//     read window by window ((K+M) MiB at a time).
//   - A Reader remembers shards it found missing or damaged; after Repair,
//     open a new Reader to use the rewritten shards again.
//   - A small read costs at least one whole block (64 KiB by default) per
//     data shard touched, because that is the checksum unit.
package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Format constants.
const (
	Magic            = "VMVSHRD1"
	Version          = 1
	HeaderSize       = 4096
	DefaultBlockSize = 64 << 10
	MinBlockSize     = 4 << 10
	MaxBlockSize     = 1 << 20
	// MaxShardLen bounds one shard's data so that a hostile header cannot
	// make a reader allocate more than 1 MiB of checksum table.
	MaxShardLen = 1 << 30
	// MaxShards is the GF(2^8) Reed-Solomon limit.
	MaxShards = 256

	tableAlign = 4096
	// prefetchLen is what NewReader reads from each shard: the header plus
	// the first table page, which holds the whole table for shards of up to
	// 1024 blocks (64 MiB at the default block size), so opening costs one
	// small read per shard and no second round trip.
	prefetchLen = HeaderSize + tableAlign

	offVersion  = 8
	offK        = 10
	offM        = 12
	offIndex    = 14
	offBlock    = 16
	offReserved = 20
	offShardLen = 24
	offPackLen  = 32
	offPackID   = 40
	offTableCRC = 72
	offFieldEnd = 76
	offHdrCRC   = HeaderSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// ErrCorrupt is wrapped by every error about damaged or inconsistent shard
// bytes (bad header, table or block checksum, wrong size).
var ErrCorrupt = errors.New("shard: corrupt")

// ErrUnrecoverable is wrapped when more shards (or blocks of one stripe) are
// missing or bad than parity can rebuild.
var ErrUnrecoverable = errors.New("shard: unrecoverable")

// corruptError carries a precise message ("shard: header: bad magic") while
// still matching errors.Is(err, ErrCorrupt).
type corruptError struct{ msg string }

func (e *corruptError) Error() string        { return e.msg }
func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }

func corruptf(format string, args ...any) error {
	return &corruptError{msg: fmt.Sprintf(format, args...)}
}

// Target names where one shard lives: a backend (one per pool directory) and
// an object name.
type Target struct {
	BE   backend.Backend
	Name string
}

// Params choose the erasure code and checksum granularity of a pack.
type Params struct {
	K, M int
	// BlockSize is the checksum and reconstruction unit, a power of two in
	// [4 KiB, 1 MiB]; 0 means DefaultBlockSize (64 KiB).
	BlockSize int
}

func (p Params) normalized() (Params, error) {
	if p.BlockSize == 0 {
		p.BlockSize = DefaultBlockSize
	}
	if p.K < 1 || p.M < 0 || p.K+p.M > MaxShards {
		return p, fmt.Errorf("shard: bad params K=%d M=%d (need K>=1, M>=0, K+M<=%d)", p.K, p.M, MaxShards)
	}
	if !validBlockSize(int64(p.BlockSize)) {
		return p, fmt.Errorf("shard: bad block size %d (power of two in [%d, %d])", p.BlockSize, MinBlockSize, MaxBlockSize)
	}
	return p, nil
}

func validBlockSize(bs int64) bool {
	return bs >= MinBlockSize && bs <= MaxBlockSize && bs&(bs-1) == 0
}

// Header is the parsed, validated header of one shard.
type Header struct {
	Version   int
	K, M      int
	Index     int // position of this shard: 0..K-1 data, K..K+M-1 parity
	BlockSize int
	ShardLen  int64 // data bytes per shard, a multiple of BlockSize
	PackLen   int64
	PackID    [32]byte
	TableCRC  uint32 // CRC-32C of the padded checksum table region
}

// Blocks is the number of blocks per shard.
func (h Header) Blocks() int { return int(h.ShardLen / int64(h.BlockSize)) }

// TableLen is the size of the padded checksum table region.
func (h Header) TableLen() int64 { return tableLen(h.Blocks()) }

// DataOffset is where block 0 starts in the shard object.
func (h Header) DataOffset() int64 { return HeaderSize + h.TableLen() }

// ObjectSize is the exact size of a well-formed shard object.
func (h Header) ObjectSize() int64 { return h.DataOffset() + h.ShardLen }

// sameLayout reports whether two headers describe the same pack (they may
// differ only in index and table CRC).
func (h Header) sameLayout(o Header) bool {
	h.Index, h.TableCRC = 0, 0
	o.Index, o.TableCRC = 0, 0
	return h == o
}

// --- pure layout functions (tested by tables) ---

// shardLen is S = roundup(ceil(packLen/k), bs).
func shardLen(packLen int64, k int, bs int) int64 {
	per := (packLen + int64(k) - 1) / int64(k)
	return (per + int64(bs) - 1) / int64(bs) * int64(bs)
}

// tableLen is the checksum table region for n blocks: 4 bytes each, padded to
// a 4 KiB multiple (at least one page, so data stays aligned).
func tableLen(n int) int64 {
	t := (int64(n)*4 + tableAlign - 1) / tableAlign * tableAlign
	if t == 0 {
		t = tableAlign
	}
	return t
}

// span is the part of a pack range that lives in one data shard.
type span struct {
	shard int   // data shard index
	off   int64 // offset within the shard's data
	n     int64 // length
	pOff  int64 // offset within the caller's buffer
}

// firstSpan returns the leading piece of pack range [off, off+n), n > 0,
// that lives in one data shard of data length s: the shard, the offset in
// it and the piece's length. ReadAt walks a range with it without
// allocating.
func firstSpan(off, n, s int64) (shard int, so, l int64) {
	so = off % s
	return int(off / s), so, min(n, s-so)
}

// spans splits pack range [off, off+n) into all its per-shard pieces.
func spans(off, n, s int64) []span {
	var out []span
	var pOff int64
	for n > 0 {
		i, so, l := firstSpan(off, n, s)
		out = append(out, span{shard: i, off: so, n: l, pOff: pOff})
		off += l
		n -= l
		pOff += l
	}
	return out
}

// blockRange returns the first and last (inclusive) block indexes covering
// shard range [off, off+n), n > 0.
func blockRange(off, n int64, bs int) (first, last int) {
	return int(off / int64(bs)), int((off + n - 1) / int64(bs))
}

// --- header encoding ---

func (h Header) marshal() []byte {
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[offVersion:], uint16(h.Version))
	binary.LittleEndian.PutUint16(b[offK:], uint16(h.K))
	binary.LittleEndian.PutUint16(b[offM:], uint16(h.M))
	binary.LittleEndian.PutUint16(b[offIndex:], uint16(h.Index))
	binary.LittleEndian.PutUint32(b[offBlock:], uint32(h.BlockSize))
	binary.LittleEndian.PutUint64(b[offShardLen:], uint64(h.ShardLen))
	binary.LittleEndian.PutUint64(b[offPackLen:], uint64(h.PackLen))
	copy(b[offPackID:], h.PackID[:])
	binary.LittleEndian.PutUint32(b[offTableCRC:], h.TableCRC)
	binary.LittleEndian.PutUint32(b[offHdrCRC:], crc(b[:offHdrCRC]))
	return b
}

// ParseHeader parses and validates a shard header from the first HeaderSize
// bytes of b. Every field is bounds-checked, so hostile input yields an error
// wrapping ErrCorrupt, never a panic or a huge allocation downstream.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, corruptf("shard: header: short (%d of %d bytes)", len(b), HeaderSize)
	}
	b = b[:HeaderSize]
	if string(b[:len(Magic)]) != Magic {
		return h, corruptf("shard: header: bad magic")
	}
	if got, want := crc(b[:offHdrCRC]), binary.LittleEndian.Uint32(b[offHdrCRC:]); got != want {
		return h, corruptf("shard: header: checksum mismatch")
	}
	h.Version = int(binary.LittleEndian.Uint16(b[offVersion:]))
	if h.Version != Version {
		return h, corruptf("shard: header: unsupported version %d", h.Version)
	}
	h.K = int(binary.LittleEndian.Uint16(b[offK:]))
	h.M = int(binary.LittleEndian.Uint16(b[offM:]))
	h.Index = int(binary.LittleEndian.Uint16(b[offIndex:]))
	if h.K < 1 || h.K+h.M > MaxShards {
		return h, corruptf("shard: header: bad shard counts K=%d M=%d", h.K, h.M)
	}
	if h.Index >= h.K+h.M {
		return h, corruptf("shard: header: index %d out of range K+M=%d", h.Index, h.K+h.M)
	}
	bs := int64(binary.LittleEndian.Uint32(b[offBlock:]))
	if !validBlockSize(bs) {
		return h, corruptf("shard: header: bad block size %d", bs)
	}
	h.BlockSize = int(bs)
	if binary.LittleEndian.Uint32(b[offReserved:]) != 0 {
		return h, corruptf("shard: header: reserved field not zero")
	}
	sl := binary.LittleEndian.Uint64(b[offShardLen:])
	pl := binary.LittleEndian.Uint64(b[offPackLen:])
	if sl == 0 || sl > MaxShardLen || sl%uint64(bs) != 0 {
		return h, corruptf("shard: header: bad shard length %d", sl)
	}
	// PackLen <= K*MaxShardLen < 2^39, so the products below cannot overflow.
	if pl == 0 || pl > uint64(h.K)*sl {
		return h, corruptf("shard: header: bad pack length %d", pl)
	}
	h.ShardLen, h.PackLen = int64(sl), int64(pl)
	if want := shardLen(h.PackLen, h.K, h.BlockSize); want != h.ShardLen {
		return h, corruptf("shard: header: shard length %d inconsistent with pack length %d (want %d)", sl, pl, want)
	}
	copy(h.PackID[:], b[offPackID:])
	h.TableCRC = binary.LittleEndian.Uint32(b[offTableCRC:])
	for _, c := range b[offFieldEnd:offHdrCRC] {
		if c != 0 {
			return h, corruptf("shard: header: reserved bytes not zero")
		}
	}
	return h, nil
}

// ReadHeader reads and parses the header of one shard object.
func ReadHeader(ctx context.Context, be backend.Backend, name string) (Header, error) {
	b := make([]byte, HeaderSize)
	if _, err := be.ReadAt(ctx, name, b, 0); err != nil {
		return Header{}, fmt.Errorf("shard: read header %s: %w", name, err)
	}
	h, err := ParseHeader(b)
	if err != nil {
		return h, fmt.Errorf("shard: %s: %w", name, err)
	}
	return h, nil
}

// parseTable checks a padded table region against the header's CRC and
// returns the per-block checksums.
func parseTable(h Header, region []byte) ([]uint32, error) {
	if int64(len(region)) != h.TableLen() {
		return nil, corruptf("shard: shard %d: checksum table short", h.Index)
	}
	if crc(region) != h.TableCRC {
		return nil, corruptf("shard: shard %d: checksum table mismatch", h.Index)
	}
	n := h.Blocks()
	// Zero padding keeps the format canonical: a shard that passes every
	// check is byte-identical to what Write (and Repair) produce.
	for _, c := range region[4*n:] {
		if c != 0 {
			return nil, corruptf("shard: shard %d: checksum table padding not zero", h.Index)
		}
	}
	t := make([]uint32, n)
	for i := range t {
		t[i] = binary.LittleEndian.Uint32(region[4*i:])
	}
	return t, nil
}

// buildTable computes the padded table region over a shard's data.
func buildTable(data []byte, bs int) []byte {
	n := len(data) / bs
	region := make([]byte, tableLen(n))
	for i := range n {
		binary.LittleEndian.PutUint32(region[4*i:], crc(data[i*bs:(i+1)*bs]))
	}
	return region
}
