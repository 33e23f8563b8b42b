package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend/mem"
)

// FuzzParseHeader: arbitrary bytes give a header or an error, never a panic;
// an accepted header is canonical (re-encoding it gives the same bytes, so
// no field or reserved byte escapes validation) and describes a bounded layout.
func FuzzParseHeader(f *testing.F) {
	for _, h := range []Header{validHeader(), {Version: 1, K: 1, M: 0, BlockSize: 4096, ShardLen: 4096, PackLen: 1}} {
		f.Add(h.marshal())
	}
	f.Add([]byte(Magic))
	check := func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		if !bytes.Equal(h.marshal(), b[:HeaderSize]) {
			t.Fatalf("accepted header is not canonical: %+v", h)
		}
		if h.TableLen() > 1<<20 || h.ShardLen > MaxShardLen || h.K+h.M > MaxShards {
			t.Fatalf("unbounded layout accepted: %+v", h)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check(t, b)
		// The fuzzer cannot guess CRC-32C, so also check the input with
		// magic and checksum made valid: that reaches the field checks.
		if len(b) >= HeaderSize {
			b = bytes.Clone(b[:HeaderSize])
			copy(b, Magic)
			reseal(b)
			check(t, b)
		}
	})
}

// reseal makes a header's checksum match its bytes.
func reseal(b []byte) {
	binary.LittleEndian.PutUint32(b[offHdrCRC:], crc(b[:offHdrCRC]))
}

// forgeShard makes fuzzed shard bytes pass checksums on request, so the
// fuzzer gets past CRC-32C gates: mode bit 0x20 rebuilds the checksum table
// from the blocks, 0x40 recomputes the table CRC, 0x80 reseals the header.
func forgeShard(b []byte, mode uint8) []byte {
	if len(b) < HeaderSize || mode&0xe0 == 0 {
		return b
	}
	b = bytes.Clone(b)
	if mode&0x60 != 0 {
		reseal(b)
		if h, err := ParseHeader(b); err == nil && int64(len(b)) >= h.ObjectSize() {
			region := b[HeaderSize:h.DataOffset()]
			if mode&0x20 != 0 {
				copy(region, buildTable(b[h.DataOffset():h.ObjectSize()], h.BlockSize))
			}
			binary.LittleEndian.PutUint32(b[offTableCRC:], crc(region))
		}
	}
	reseal(b)
	return b
}

// The FuzzReader pack: 2+1 with 4 KiB blocks, two blocks per shard.
var fuzzPack = sync.OnceValues(func() ([]byte, [][]byte) {
	pack := make([]byte, 10000)
	for i := range pack {
		pack[i] = byte(i*7 + i>>8)
	}
	p := &pool{t: nil, kind: "mem"}
	for range 3 {
		p.targets = append(p.targets, Target{BE: mem.New(), Name: objName})
	}
	if err := Write(context.Background(), p.targets, packIDOf(42), Params{K: 2, M: 1, BlockSize: 4096}, pack); err != nil {
		panic(err)
	}
	shards := make([][]byte, 3)
	for i, tg := range p.targets {
		b := make([]byte, 16384)
		if _, err := tg.BE.ReadAt(context.Background(), tg.Name, b, 0); err != nil {
			panic(err)
		}
		shards[i] = b
	}
	return pack, shards
})

// FuzzReader replaces one shard of a 2+1 pack with fuzzed bytes (optionally
// re-sealed, see forgeShard). With at most M=1 shard bad, every read must
// return the exact pack and Repair must restore byte-identical shards, unless
// the shard is forged to pass all of its own checksums (CRC-32C is no MAC):
// then reads may return its bytes and Repair may refuse with ErrCorrupt
// (parity inconsistent), but nothing may panic, hang or allocate wildly.
func FuzzReader(f *testing.F) {
	pack, shards := fuzzPack()
	f.Add(uint8(0), shards[0])
	f.Add(uint8(2), shards[2][:HeaderSize+100])
	f.Add(uint8(1), []byte{})
	f.Fuzz(func(t *testing.T, which uint8, fuzzed []byte) {
		if len(fuzzed) > 1<<20 {
			return
		}
		ctx := context.Background()
		idx := int(which&0x1f) % 3
		fuzzed = forgeShard(fuzzed, which)
		targets := make([]Target, 3)
		for i := range targets {
			be := mem.New()
			b := shards[i]
			if i == idx {
				b = fuzzed
			}
			if err := be.Put(ctx, objName, bytes.NewReader(b), int64(len(b))); err != nil {
				t.Fatal(err)
			}
			targets[i] = Target{BE: be, Name: objName}
		}
		// A forged shard agrees with the pack's layout and passes all of its
		// own checksums yet holds other bytes: reads may return them.
		forged := func() bool {
			h, err := ParseHeader(fuzzed)
			orig, _ := ParseHeader(shards[idx])
			if err != nil || !h.sameLayout(orig) || int64(len(fuzzed)) < h.ObjectSize() {
				return false
			}
			table, err := parseTable(h, fuzzed[HeaderSize:h.DataOffset()])
			if err != nil {
				return false
			}
			for b, c := range table {
				off := h.DataOffset() + int64(b*h.BlockSize)
				if crc(fuzzed[off:off+int64(h.BlockSize)]) != c {
					return false
				}
			}
			return !bytes.Equal(fuzzed[:h.ObjectSize()], shards[idx])
		}
		r, err := NewReader(ctx, targets)
		if err != nil {
			t.Fatalf("NewReader with one bad shard: %v", err)
		}
		for _, rg := range [][2]int{{0, len(pack)}, {8190, 10}, {4000, 200}, {9999, 1}} {
			buf := make([]byte, rg[1])
			n, _, err := r.ReadAt(ctx, buf, int64(rg[0]))
			if err != nil || n != rg[1] || !bytes.Equal(buf, pack[rg[0]:rg[0]+rg[1]]) {
				if !forged() {
					t.Fatalf("ReadAt(%d, %d): n=%d err=%v, data ok=%v", rg[0], rg[1], n, err, bytes.Equal(buf, pack[rg[0]:rg[0]+rg[1]]))
				}
				return
			}
		}
		if _, err := Repair(ctx, targets); err != nil {
			if errors.Is(err, ErrCorrupt) && forged() {
				return
			}
			t.Fatalf("Repair: %v", err)
		}
		for i, tg := range targets {
			info, _ := tg.BE.Stat(ctx, tg.Name)
			b := make([]byte, info.Size)
			tg.BE.ReadAt(ctx, tg.Name, b, 0)
			if !bytes.Equal(b, shards[i]) {
				t.Fatalf("shard %d differs after Repair", i)
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed seed corpus under
// testdata/fuzz when VMVAULT_WRITE_FUZZ_SEEDS=1; otherwise it is skipped.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VMVAULT_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set VMVAULT_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	write := func(target, name string, vals ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n"
		for _, v := range vals {
			body += v + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bs := func(b []byte) string { return "[]byte(" + strconv.Quote(string(b)) + ")" }
	u8 := func(v uint8) string { return fmt.Sprintf("byte(%d)", v) }

	hdrs := map[string][]byte{
		"valid-4+2":   validHeader().marshal(),
		"valid-1+0":   Header{Version: 1, K: 1, BlockSize: 4096, ShardLen: 4096, PackLen: 1}.marshal(),
		"valid-10+4":  Header{Version: 1, K: 10, M: 4, Index: 13, BlockSize: 1 << 20, ShardLen: 1 << 30, PackLen: 10 << 30}.marshal(),
		"short-magic": []byte(Magic),
		"empty":       {},
	}
	bad := validHeader().marshal()
	bad[offHdrCRC] ^= 1
	hdrs["bad-crc"] = bad
	for name, b := range hdrs {
		write("FuzzParseHeader", name, bs(b))
	}

	_, shards := fuzzPack()
	flipped := bytes.Clone(shards[1])
	flipped[HeaderSize+8192+5] ^= 0x40 // a data block
	table := bytes.Clone(shards[0])
	table[HeaderSize+2] ^= 1
	write("FuzzReader", "valid-shard0", u8(0), bs(shards[0]))
	write("FuzzReader", "parity-as-data", u8(1), bs(shards[2]))
	write("FuzzReader", "block-flip", u8(1), bs(flipped))
	write("FuzzReader", "table-flip", u8(0), bs(table))
	write("FuzzReader", "truncated", u8(2), bs(shards[2][:HeaderSize+4096+100]))
	write("FuzzReader", "header-only", u8(0), bs(shards[0][:HeaderSize]))
	write("FuzzReader", "empty", u8(1), bs(nil))
	write("FuzzReader", "forged-block", u8(0x20|1), bs(flipped))
	foreign := bytes.Clone(shards[0])
	foreign[offPackID] ^= 1
	write("FuzzReader", "foreign-packid", u8(0x80), bs(foreign))
	bigK := bytes.Clone(shards[2])
	binary.LittleEndian.PutUint16(bigK[offK:], 200)
	write("FuzzReader", "resealed-bad-k", u8(0x80|2), bs(bigK))
}
