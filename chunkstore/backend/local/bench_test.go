package local

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend/backendtest"
)

// BenchmarkPut measures durable Puts (write, fsync, rename, directory
// fsync) of shard-sized objects; the fsyncs dominate small sizes.
func BenchmarkPut(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			be := open(b, b.TempDir(), nil)
			data := backendtest.Data(1, size)
			ctx := context.Background()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("pool0/%02x/obj-%d", i%256, i)
				if err := be.Put(ctx, name, bytes.NewReader(data), int64(size)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadAt measures random chunk-sized reads spread over 16 shard
// files of 4 MiB (hot in the page cache, so this is the per-call overhead
// the handle cache exists to remove), with and without the cache.
func BenchmarkReadAt(b *testing.B) {
	const objects, objSize = 16, 4 << 20
	for _, cache := range []struct {
		name string
		max  int
	}{{"cache", 0}, {"nocache", -1}} {
		for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/%dKiB", cache.name, size>>10), func(b *testing.B) {
				be := open(b, b.TempDir(), &Options{MaxOpenFiles: cache.max})
				data := backendtest.Data(2, objSize)
				for i := range objects {
					backendtest.Put(b, be, fmt.Sprintf("pool0/shard-%02d", i), data)
				}
				ctx := context.Background()
				p := make([]byte, size)
				r := rand.New(rand.NewPCG(1, 2))
				b.SetBytes(int64(size))
				b.ResetTimer()
				for b.Loop() {
					name := fmt.Sprintf("pool0/shard-%02d", r.IntN(objects))
					off := r.Int64N(objSize - int64(size))
					if _, err := be.ReadAt(ctx, name, p, off); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
