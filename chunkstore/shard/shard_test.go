package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

func TestShardLen(t *testing.T) {
	const kib = 1024
	for _, c := range []struct {
		packLen int64
		k, bs   int
		want    int64
	}{
		{1, 1, 4 * kib, 4 * kib},
		{1, 10, 64 * kib, 64 * kib},
		{4 * kib, 1, 4 * kib, 4 * kib},
		{4*kib + 1, 1, 4 * kib, 8 * kib},
		{65537, 4, 64 * kib, 64 * kib},
		{4 * 64 * kib, 4, 64 * kib, 64 * kib},
		{4*64*kib + 1, 4, 64 * kib, 128 * kib},
		{32 << 20, 8, 64 * kib, 4 << 20},
		{40 << 20, 10, 64 * kib, 4 << 20},
		{40<<20 + 3, 10, 64 * kib, 4<<20 + 64*kib},
	} {
		if got := shardLen(c.packLen, c.k, c.bs); got != c.want {
			t.Errorf("shardLen(%d, %d, %d) = %d, want %d", c.packLen, c.k, c.bs, got, c.want)
		}
	}
}

func TestTableLen(t *testing.T) {
	for _, c := range []struct {
		n    int
		want int64
	}{{0, 4096}, {1, 4096}, {1024, 4096}, {1025, 8192}, {262144, 1 << 20}} {
		if got := tableLen(c.n); got != c.want {
			t.Errorf("tableLen(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}

func TestSpans(t *testing.T) {
	for _, c := range []struct {
		off, n, s int64
		want      []span
	}{
		{0, 10, 100, []span{{0, 0, 10, 0}}},
		{95, 10, 100, []span{{0, 95, 5, 0}, {1, 0, 5, 5}}},
		{100, 100, 100, []span{{1, 0, 100, 0}}},
		{50, 250, 100, []span{{0, 50, 50, 0}, {1, 0, 100, 50}, {2, 0, 100, 150}}},
		{0, 0, 100, nil},
	} {
		if got := spans(c.off, c.n, c.s); !slices.Equal(got, c.want) {
			t.Errorf("spans(%d, %d, %d) = %v, want %v", c.off, c.n, c.s, got, c.want)
		}
	}
}

func TestBlockRange(t *testing.T) {
	for _, c := range []struct {
		off, n      int64
		bs          int
		first, last int
	}{
		{0, 1, 4096, 0, 0},
		{4095, 1, 4096, 0, 0},
		{4095, 2, 4096, 0, 1},
		{4096, 4096, 4096, 1, 1},
		{4096, 4097, 4096, 1, 2},
		{0, 1 << 20, 65536, 0, 15},
	} {
		f, l := blockRange(c.off, c.n, c.bs)
		if f != c.first || l != c.last {
			t.Errorf("blockRange(%d, %d, %d) = %d,%d want %d,%d", c.off, c.n, c.bs, f, l, c.first, c.last)
		}
	}
}

func TestCopyBlock(t *testing.T) {
	blk := []byte("0123456789abcdef") // block 2 of size 16: shard bytes [32, 48)
	for _, c := range []struct {
		so   int64
		n    int
		want string
	}{
		{32, 16, "0123456789abcdef"},
		{30, 6, "..0123"},
		{44, 8, "cdef...."},
		{36, 4, "4567"},
		{0, 8, "........"},
	} {
		dst := bytes.Repeat([]byte("."), c.n)
		copyBlock(dst, c.so, 2, 16, blk)
		if string(dst) != c.want {
			t.Errorf("copyBlock(so=%d, n=%d) = %q, want %q", c.so, c.n, dst, c.want)
		}
	}
}

func validHeader() Header {
	return Header{Version: Version, K: 4, M: 2, Index: 5, BlockSize: 65536,
		ShardLen: 128 << 10, PackLen: 400000, PackID: packIDOf(7), TableCRC: 0xdeadbeef}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := validHeader()
	b := h.marshal()
	if len(b) != HeaderSize {
		t.Fatalf("header is %d bytes", len(b))
	}
	got, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Fatalf("got %+v, want %+v", got, h)
	}
	if h.ObjectSize() != HeaderSize+4096+128<<10 {
		t.Fatalf("ObjectSize %d", h.ObjectSize())
	}
}

// TestParseHeaderRejects damages one field at a time (re-sealing the CRC so
// the field check itself is reached) and expects a named ErrCorrupt.
func TestParseHeaderRejects(t *testing.T) {
	u16 := func(off int, v uint16) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint16(b[off:], v); reseal(b) }
	}
	u32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[off:], v); reseal(b) }
	}
	u64 := func(off int, v uint64) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint64(b[off:], v); reseal(b) }
	}
	for _, c := range []struct {
		name string
		mut  func([]byte)
		want string
	}{
		{"short", nil, "shard: header: short"},
		{"magic", func(b []byte) { b[0] = 'X'; reseal(b) }, "shard: header: bad magic"},
		{"crc", func(b []byte) { b[100] ^= 1 }, "shard: header: checksum mismatch"},
		{"crc field", func(b []byte) { b[offHdrCRC] ^= 0x80 }, "shard: header: checksum mismatch"},
		{"version", u16(offVersion, 2), "unsupported version 2"},
		{"k zero", u16(offK, 0), "bad shard counts"},
		{"k+m>256", u16(offM, 253), "bad shard counts"},
		{"index", u16(offIndex, 6), "index 6 out of range"},
		{"block size small", u32(offBlock, 2048), "bad block size"},
		{"block size big", u32(offBlock, 2<<20), "bad block size"},
		{"block size odd", u32(offBlock, 65537), "bad block size"},
		{"reserved", u32(offReserved, 1), "reserved field"},
		{"shard len zero", u64(offShardLen, 0), "bad shard length"},
		{"shard len huge", u64(offShardLen, 1<<40), "bad shard length"},
		{"shard len unaligned", u64(offShardLen, 128<<10+1), "bad shard length"},
		{"pack len zero", u64(offPackLen, 0), "bad pack length"},
		{"pack len too big", u64(offPackLen, 4*128<<10+1), "bad pack length"},
		{"pack len inconsistent", u64(offPackLen, 1000), "inconsistent"},
		{"reserved tail", func(b []byte) { b[2000] = 1; reseal(b) }, "reserved bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := validHeader().marshal()
			if c.mut == nil {
				b = b[:HeaderSize-1]
			} else {
				c.mut(b)
			}
			_, err := ParseHeader(b)
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt containing %q", err, c.want)
			}
		})
	}
}

func TestWriteRejects(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, "mem", 6)
	id := packIDOf(1)
	if err := Write(ctx, p.targets, id, Params{K: 4, M: 2}, nil); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty pack: %v", err)
	}
	for _, prm := range []Params{{K: 3, M: 2}, {K: 0, M: 6}, {K: 4, M: 2, BlockSize: 1000}, {K: 4, M: 2, BlockSize: 2 << 20}} {
		if err := Write(ctx, p.targets, id, prm, []byte("x")); err == nil {
			t.Errorf("Write with %+v and 6 targets succeeded", prm)
		}
	}
	for i := range p.targets {
		if p.get(i) != nil {
			t.Fatalf("rejected Write stored shard %d", i)
		}
	}
}

// TestRoundTrip writes packs of awkward sizes with every K/M on both real
// files and memory and reads them back whole, at every boundary and at
// random ranges.
func TestRoundTrip(t *testing.T) {
	sizes := []int{1, 4095, 4096, 65537, 1_000_003, 40 << 20}
	for _, kind := range []string{"local", "mem"} {
		for _, km := range kmCases {
			for _, size := range sizes {
				if size == 40<<20 && (testing.Short() || kind == "mem") {
					continue
				}
				bs := 0
				if size < 100000 {
					bs = 4096 // several blocks even for small packs
				}
				t.Run(fmt.Sprintf("%s/%d+%d/%d", kind, km.k, km.m, size), func(t *testing.T) {
					rng := rand.New(rand.NewPCG(uint64(size), uint64(km.k)))
					pack := randBytes(rng, size)
					p := newPool(t, kind, km.k+km.m)
					id := writePack(t, p, km.k, km.m, bs, pack)
					r := mustReader(t, p.targets)
					h := r.Header()
					if h.K != km.k || h.M != km.m || h.PackLen != int64(size) || h.PackID != id {
						t.Fatalf("header %+v", h)
					}
					for i := range p.targets {
						if got := int64(len(p.get(i))); got != h.ObjectSize() {
							t.Fatalf("shard %d is %d bytes, want %d", i, got, h.ObjectSize())
						}
					}
					if bad := checkReads(t, r, pack, rng, 200); bad != nil {
						t.Fatalf("clean pack reported bad shards %v", bad)
					}
					if n, _, err := r.ReadAt(context.Background(), make([]byte, 1), int64(size)); n != 0 || err != io.EOF {
						t.Fatalf("read at PackLen: %d, %v", n, err)
					}
					rep, err := Verify(context.Background(), p.targets, true)
					if err != nil || !rep.OK() || !rep.DataChecked {
						t.Fatalf("Verify: %+v %v", rep, err)
					}
				})
			}
		}
	}
}

// TestSystematic checks that data shards hold the pack bytes verbatim,
// contiguously: the layout promise a reader of raw files could rely on.
func TestSystematic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pack := randBytes(rng, 300_001)
	p := newPool(t, "mem", 6)
	writePack(t, p, 4, 2, 4096, pack)
	h := mustReader(t, p.targets).Header()
	for i := range 4 {
		obj := p.get(i)
		data := obj[h.DataOffset():]
		lo := min(int64(i)*h.ShardLen, int64(len(pack)))
		hi := min(lo+h.ShardLen, int64(len(pack)))
		if !bytes.Equal(data[:hi-lo], pack[lo:hi]) || bytes.ContainsFunc(data[hi-lo:], func(r rune) bool { return r != 0 }) {
			t.Fatalf("data shard %d does not hold pack[%d:%d] zero padded", i, lo, hi)
		}
	}
}

func TestReadHeaderAndCleanRepair(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, "local", 3)
	pack := randBytes(rand.New(rand.NewPCG(1, 1)), 5000)
	id := writePack(t, p, 2, 1, 0, pack)
	for i, tg := range p.targets {
		h, err := ReadHeader(ctx, tg.BE, tg.Name)
		if err != nil || h.Index != i || h.PackID != id || h.BlockSize != DefaultBlockSize || h.PackLen != 5000 {
			t.Fatalf("ReadHeader %d: %+v %v", i, h, err)
		}
	}
	if _, err := ReadHeader(ctx, p.targets[0].BE, "ab/missing.shard"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("ReadHeader of a missing object: %v", err)
	}
	checkRepair(t, p, p.getAll(), nil)
}
