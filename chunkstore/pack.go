package chunkstore

import (
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Pack format: many chunk blobs and a self-describing trailer, so that the
// index can be rebuilt from the packs alone.
//
//	[0, 8)      header: "VVPK" version(1) flags(bit0 sealed trailer) 0 0
//	[8, T)      chunk blobs, back to back
//	[T, E)      trailer: plain body, or nonce(12) || GCM(body, AAD = "vmvault pack trailer v1" || pack ID)
//	[E, E+16)   footer: u32 LE trailer length, u32 LE CRC-32C of the trailer region,
//	            u32 0, "VVPT"
//
// Trailer body: byte version (1), uvarint count, then count entries of 48
// bytes: chunk ID [32], u64 LE offset in the pack, u32 LE stored length,
// u32 LE raw length, in increasing offset order.
//
// The pack ID is 32 random bytes, not a hash of the pack: it costs nothing
// at ingest, never collides, and lets the sealed trailer bind its pack ID
// (a trailer copied into another pack fails authentication). The shard
// layer's per-block CRCs already cover the pack's bytes.

const (
	packMagic      = "VVPK"
	footerMagic    = "VVPT"
	packVersion    = 1
	packHeaderLen  = 8
	packFooterLen  = 16
	trailerEntry   = 48
	trailerVersion = 1
	// maxPackEntries bounds a trailer (1 GiB pack of 4 KiB chunks).
	maxPackEntries = 1 << 18
)

// PackID names a pack.
type PackID [32]byte

func (p PackID) String() string { return hex.EncodeToString(p[:]) }

// packEntry is one chunk of a pack.
type packEntry struct {
	ID     ID
	Offset uint64
	Stored uint32
	Raw    uint32
}

// packBuilder accumulates blobs of an open pack in one preallocated buffer
// (never reallocated, so pending readers may slice it).
type packBuilder struct {
	id      PackID
	buf     []byte
	entries []packEntry
}

func newPackBuilder(capacity int, sealed bool) *packBuilder {
	p := &packBuilder{buf: getPackBuf(capacity)}
	mustRand(p.id[:])
	p.buf = append(p.buf, packMagic...)
	flags := byte(0)
	if sealed {
		flags = 1
	}
	p.buf = append(p.buf, packVersion, flags, 0, 0)
	return p
}

// packBufs recycles pack buffers (~34 MiB each with the defaults): a fresh
// one costs a clear of its whole capacity and page faults, ~0.2 s of CPU per
// GB stored. sync.Pool rather than a free list so that an idle long-lived
// Store (a mount serving backups) hands the memory back to the GC.
var packBufs sync.Pool // *[]byte

func getPackBuf(capacity int) []byte {
	if bp, ok := packBufs.Get().(*[]byte); ok {
		if cap(*bp) >= capacity {
			return (*bp)[:0]
		}
	}
	// Aligned: its data shards are written from it with O_DIRECT.
	return backend.AlignedBuffer(capacity)[:0]
}

// release recycles the pack's buffer. Call it only when nothing can read
// the buffer any more: the pack is written and none of its chunks is in the
// pending map (pending reads copy under packMu).
func (p *packBuilder) release() {
	b := p.buf[:0]
	p.buf = nil
	packBufs.Put(&b)
}

// fits reports whether a blob of n bytes can be appended without
// reallocating.
func (p *packBuilder) fits(n int) bool { return len(p.buf)+n <= cap(p.buf) }

// add appends a blob given in parts (blobParts: head, then frames).
func (p *packBuilder) add(id ID, raw int, parts [][]byte) packEntry {
	e := packEntry{ID: id, Offset: uint64(len(p.buf)), Raw: uint32(raw)}
	for _, b := range parts {
		p.buf = append(p.buf, b...)
	}
	e.Stored = uint32(uint64(len(p.buf)) - e.Offset)
	p.entries = append(p.entries, e)
	return e
}

// seal appends the trailer and footer and returns the finished pack bytes.
func (p *packBuilder) seal(aead cipher.AEAD) []byte {
	body := encodeTrailerBody(p.entries)
	start := len(p.buf)
	if aead != nil {
		var nonce [nonceLen]byte
		mustRand(nonce[:])
		p.buf = append(p.buf, nonce[:]...)
		p.buf = aead.Seal(p.buf, nonce[:], body, trailerAAD(p.id))
	} else {
		p.buf = append(p.buf, body...)
	}
	tl := len(p.buf) - start
	c := crc32c(p.buf[start:])
	p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(tl))
	p.buf = binary.LittleEndian.AppendUint32(p.buf, c)
	p.buf = binary.LittleEndian.AppendUint32(p.buf, 0)
	p.buf = append(p.buf, footerMagic...)
	return p.buf
}

func trailerAAD(id PackID) []byte {
	return append([]byte("vmvault pack trailer v1"), id[:]...)
}

func encodeTrailerBody(es []packEntry) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(es)*trailerEntry)
	b = append(b, trailerVersion)
	b = binary.AppendUvarint(b, uint64(len(es)))
	for _, e := range es {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint64(b, e.Offset)
		b = binary.LittleEndian.AppendUint32(b, e.Stored)
		b = binary.LittleEndian.AppendUint32(b, e.Raw)
	}
	return b
}

// parseFooter checks the 16-byte footer of a pack of packLen bytes and
// returns the trailer's length.
func parseFooter(f []byte, packLen int64) (int, uint32, error) {
	if len(f) != packFooterLen || string(f[12:]) != footerMagic || binary.LittleEndian.Uint32(f[8:]) != 0 {
		return 0, 0, fmt.Errorf("chunkstore: pack footer: %w: bad magic", ErrCorrupt)
	}
	tl := int64(binary.LittleEndian.Uint32(f))
	if tl < 2 || tl > packLen-packHeaderLen-packFooterLen || tl > maxPackEntries*trailerEntry+64 {
		return 0, 0, fmt.Errorf("chunkstore: pack footer: %w: bad trailer length %d", ErrCorrupt, tl)
	}
	return int(tl), binary.LittleEndian.Uint32(f[4:]), nil
}

// parseTrailer parses (and, for a sealed trailer, opens) the trailer region
// of pack id, whose trailer starts at trailerOff. Entries must lie inside
// [packHeaderLen, trailerOff), in increasing offset order, not overlapping.
// Hostile input yields an error wrapping ErrCorrupt, never a panic.
func parseTrailer(region []byte, wantCRC uint32, id PackID, trailerOff int64, aead cipher.AEAD) ([]packEntry, error) {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("chunkstore: pack %s trailer: %w: %s", id, ErrCorrupt, fmt.Sprintf(f, a...))
	}
	if crc32c(region) != wantCRC {
		return nil, bad("checksum mismatch")
	}
	body := region
	if aead != nil {
		if len(region) < sealOverhead {
			return nil, bad("short")
		}
		b, err := aead.Open(nil, region[:nonceLen], region[nonceLen:], trailerAAD(id))
		if err != nil {
			return nil, bad("authentication failed (wrong repository key or damaged)")
		}
		body = b
	}
	if len(body) < 2 || body[0] != trailerVersion {
		return nil, bad("unknown version")
	}
	n, k := binary.Uvarint(body[1:])
	if k <= 0 || n > maxPackEntries {
		return nil, bad("bad entry count")
	}
	rest := body[1+k:]
	if uint64(len(rest)) != n*trailerEntry {
		return nil, bad("%d entries in %d bytes", n, len(rest))
	}
	es := make([]packEntry, n)
	next := uint64(packHeaderLen)
	for i := range es {
		r := rest[i*trailerEntry:]
		copy(es[i].ID[:], r[:32])
		es[i].Offset = binary.LittleEndian.Uint64(r[32:])
		es[i].Stored = binary.LittleEndian.Uint32(r[40:])
		es[i].Raw = binary.LittleEndian.Uint32(r[44:])
		e := es[i]
		if e.Offset < next || e.Stored == 0 || e.Offset+uint64(e.Stored) > uint64(trailerOff) || e.Raw > maxChunkRaw {
			return nil, bad("entry %d out of bounds", i)
		}
		next = e.Offset + uint64(e.Stored)
	}
	return es, nil
}

// Object names: shard i of pack P lives in pool i mod len(pools) as
// "packs/<first two hex digits of P>/<P hex>.<i>".

func shardName(id PackID, i int) string {
	h := id.String()
	return "packs/" + h[:2] + "/" + h + "." + strconv.Itoa(i)
}

// parseShardName is the inverse of shardName.
func parseShardName(name string) (PackID, int, bool) {
	var id PackID
	rest, ok := strings.CutPrefix(name, "packs/")
	if !ok || len(rest) < 3 || rest[2] != '/' {
		return id, 0, false
	}
	h, idx, ok := strings.Cut(rest[3:], ".")
	if !ok || len(h) != 64 || h[:2] != rest[:2] {
		return id, 0, false
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, 0, false
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || i > 255 || strconv.Itoa(i) != idx {
		return id, 0, false
	}
	return id, i, true
}
