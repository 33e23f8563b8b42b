package shard

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// benchPack writes a 32 MiB pack with 8+2 and default 64 KiB blocks.
func benchPack(b *testing.B, kind string) (*pool, []byte) {
	rng := rand.New(rand.NewPCG(1, 1))
	pack := randBytes(rng, 32<<20)
	p := newPool(b, kind, 10)
	writePack(b, p, 8, 2, 0, pack)
	return p, pack
}

// nullBackend discards Puts: it isolates the format's own CPU cost
// (checksums, erasure coding) from any backend's copying.
type nullBackend struct{ backend.Backend }

func (nullBackend) Put(_ context.Context, _ string, r io.Reader, _ int64) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// BenchmarkWrite: erasure coding, checksums and Puts of a 32 MiB pack with
// 8+2; "null" is the CPU cost of the format alone, "mem" adds the memory
// backend's copy, "local" real files with fsync.
func BenchmarkWrite(b *testing.B) {
	for _, kind := range []string{"null", "mem", "local"} {
		b.Run(kind+"/32MiB/8+2", func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 1))
			pack := randBytes(rng, 32<<20)
			var p *pool
			if kind == "null" {
				p = &pool{t: b}
				for range 10 {
					p.targets = append(p.targets, Target{BE: nullBackend{}, Name: objName})
				}
			} else {
				p = newPool(b, kind, 10)
			}
			ctx := context.Background()
			b.SetBytes(int64(len(pack)))
			b.ResetTimer()
			for i := range b.N {
				if err := Write(ctx, p.targets, packIDOf(uint64(i)), Params{K: 8, M: 2}, pack); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadAt reads a page-cached local pack: 1 MiB sequential
// (block-aligned and shifted by 100 bytes), 4 KiB at random offsets, and
// the same with data shard 3 deleted (degraded: 3/8 of the reads rebuild).
func BenchmarkReadAt(b *testing.B) {
	p, pack := benchPack(b, "local")
	ctx := context.Background()
	seq := func(shift int64, size int) func(b *testing.B) {
		return func(b *testing.B) {
			r := mustReader(b, p.targets)
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			var off int64
			for b.Loop() {
				if off+int64(size)+shift > int64(len(pack)) {
					off = 0
				}
				if _, _, err := r.ReadAt(ctx, buf, off+shift); err != nil {
					b.Fatal(err)
				}
				off += int64(size)
			}
		}
	}
	random := func(size int) func(b *testing.B) {
		return func(b *testing.B) {
			r := mustReader(b, p.targets)
			buf := make([]byte, size)
			rng := rand.New(rand.NewPCG(2, 2))
			b.SetBytes(int64(size))
			for b.Loop() {
				off := rng.Int64N(int64(len(pack) - size))
				if _, _, err := r.ReadAt(ctx, buf, off); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("seq1MiB/aligned", seq(0, 1<<20))
	b.Run("seq1MiB/unaligned", seq(100, 1<<20))
	b.Run("rand4KiB", random(4096))
	p.del(3)
	b.Run("degraded/seq1MiB", seq(100, 1<<20))
	b.Run("degraded/rand4KiB", random(4096))
	b.Run("degraded/lostShardOnly/rand4KiB", func(b *testing.B) {
		// Every read hits the lost shard: the full reconstruction cost.
		r := mustReader(b, p.targets)
		h := r.Header()
		buf := make([]byte, 4096)
		rng := rand.New(rand.NewPCG(3, 3))
		b.SetBytes(4096)
		for b.Loop() {
			off := 3*h.ShardLen + rng.Int64N(h.ShardLen-4096)
			if _, _, err := r.ReadAt(ctx, buf, off); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkVerifyRepair: full data verification and a one-shard repair of
// a 32 MiB 8+2 pack in memory.
func BenchmarkVerifyRepair(b *testing.B) {
	p, pack := benchPack(b, "mem")
	ctx := context.Background()
	b.Run("verify", func(b *testing.B) {
		b.SetBytes(int64(len(pack)))
		for b.Loop() {
			if _, err := Verify(ctx, p.targets, true); err != nil {
				b.Fatal(err)
			}
		}
	})
	orig := p.get(3)
	b.Run("repair1", func(b *testing.B) {
		b.SetBytes(int64(len(pack)))
		for b.Loop() {
			p.del(3)
			if got, err := Repair(ctx, p.targets); err != nil || len(got) != 1 {
				b.Fatal(got, err)
			}
		}
	})
	if string(p.get(3)) != string(orig) {
		b.Fatal(fmt.Errorf("repair not byte-identical"))
	}
}
