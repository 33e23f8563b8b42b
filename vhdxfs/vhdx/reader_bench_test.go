package vhdx

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// rdtBenchImage writes a 256 MiB dynamic VHDX (32 MiB blocks, all present,
// non-zero data) and returns its path; the write leaves it in page cache.
func rdtBenchImage(b *testing.B, bs uint32) string {
	b.Helper()
	const size = 256 * MiB
	states := make([]uint8, size/int64(bs))
	for i := range states {
		states[i] = PayloadFullyPresent
	}
	f := rdtBuild(b, rdtSpec{vsize: size, bs: bs, dataWrite: rdtGUIDn(1), states: states, seed: 42})
	p := filepath.Join(b.TempDir(), "bench.vhdx")
	if err := os.WriteFile(p, f, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkReadSequential reads a page-cached image front to back in 1 MiB
// requests through the reader (one core); MB/s is the figure to watch.
func BenchmarkReadSequential(b *testing.B) {
	for _, bs := range []uint32{2 * MiB, 32 * MiB} {
		b.Run(fmt.Sprintf("block%dM", bs/MiB), func(b *testing.B) {
			d := rdtOpen(b, rdtBenchImage(b, bs))
			buf := make([]byte, MiB)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			off := int64(0)
			for range b.N {
				if _, err := d.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
				if off += int64(len(buf)); off >= d.Size() {
					off = 0
				}
			}
		})
	}
}

// BenchmarkReadSequentialFile is the baseline: the same file read with
// os.File.ReadAt, to show the reader's overhead.
func BenchmarkReadSequentialFile(b *testing.B) {
	p := rdtBenchImage(b, 32*MiB)
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	buf := make([]byte, MiB)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	off := int64(0)
	for range b.N {
		if _, err := f.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
		if off += int64(len(buf)); off >= st.Size() {
			off = 0
		}
	}
}
