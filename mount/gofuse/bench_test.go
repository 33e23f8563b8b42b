//go:build linux

package gofuse

import (
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/internal/fusetest"
	"github.com/vmvault/vmvault/vhdxfs"
)

// Benchmarks read through a real go-fuse mount. Every measured pass uses a
// fresh mount (so neither the kernel page cache, kept with
// FOPEN_KEEP_CACHE, nor the tree's block cache is warm) of either a
// DirSource over the test disk files ("dir": VHDX parsing only) or a real
// repository ("engine": chunk lookup, decompression, shard reads).
//
//	go test -run XXX -bench . -benchtime 3x ./mount/gofuse/

// each runs fn on both sources. Fixtures are built per top-level benchmark
// (their temporary directories end with it).
func each(b *testing.B, fn func(b *testing.B, name string, src mount.Source, rp string)) {
	repo := fusetest.NewRepo(b)
	er, erepo, _ := fusetest.EngineRepo(b)
	b.Run("dir", func(b *testing.B) { fn(b, "dir", mount.DirSource{Root: repo.Root}, fusetest.VM1RP1) })
	b.Run("engine", func(b *testing.B) { fn(b, "engine", mount.EngineSource{Repo: er}, erepo.Disks[0].RP) })
}

// freshMount mounts src; the returned func unmounts.
func freshMount(b *testing.B, src mount.Source, opts ...mount.Options) (string, func()) {
	o := mount.Options{Logf: b.Logf}
	if len(opts) > 0 {
		o = opts[0]
		o.Logf = b.Logf
	}
	tree := mount.New(src, o)
	dir, err := os.MkdirTemp("", "vmvault-bench-")
	if err != nil {
		b.Fatal(err)
	}
	s, err := Mount(tree, dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	return dir, func() {
		s.Unmount()
		s.Wait()
		tree.Close()
		os.Remove(dir)
	}
}

func benchSeq(b *testing.B, src mount.Source, rel string, opts ...mount.Options) {
	buf := make([]byte, 1<<20)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		mnt, unmount := freshMount(b, src, opts...)
		f, err := os.Open(filepath.Join(mnt, rel))
		if err != nil {
			b.Fatal(err)
		}
		fi, _ := f.Stat()
		b.SetBytes(fi.Size())
		b.StartTimer()
		for {
			_, err := f.Read(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		f.Close()
		unmount()
	}
}

// BenchmarkSeqReadRaw: sequential 1 MiB reads of the 200 MiB gpt.raw.
func BenchmarkSeqReadRaw(b *testing.B) {
	each(b, func(b *testing.B, name string, src mount.Source, rp string) {
		benchSeq(b, src, filepath.Join(fusetest.VM1, rp, "disks", "gpt.raw"))
	})
}

// BenchmarkSeqReadVHDX: sequential 1 MiB reads of the synthesized gpt.vhdx.
func BenchmarkSeqReadVHDX(b *testing.B) {
	each(b, func(b *testing.B, name string, src mount.Source, rp string) {
		benchSeq(b, src, filepath.Join(fusetest.VM1, rp, "disks", "gpt.vhdx"))
	})
}

// BenchmarkRandRead4K: random 4 KiB preads inside the allocated ranges of
// gpt.raw (holes would be free) on one fresh mount; reports p50/p99
// latency. Later reads may hit the block cache, as they would in use.
func BenchmarkRandRead4K(b *testing.B) {
	d, err := vhdxfs.Open(filepath.Join(testdisks.Dir(b), testdisks.GPTVHDX))
	if err != nil {
		b.Fatal(err)
	}
	var pages []int64 // allocated 4 KiB pages
	for _, e := range d.Allocated() {
		for p := e.Off / 4096; p < (e.End()+4095)/4096; p++ {
			pages = append(pages, p*4096)
		}
	}
	d.Close()
	each(b, func(b *testing.B, name string, src mount.Source, rp string) {
		mnt, unmount := freshMount(b, src)
		defer unmount()
		f, err := os.Open(filepath.Join(mnt, fusetest.VM1, rp, "disks", "gpt.raw"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		rnd := rand.New(rand.NewSource(1))
		buf := make([]byte, 4096)
		lat := make([]time.Duration, 0, b.N)
		b.SetBytes(4096)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			off := pages[rnd.Intn(len(pages))]
			t0 := time.Now()
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		b.StopTimer()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	})
}

// BenchmarkListNTFSRoot: from a fresh mount, list the root of the guest
// NTFS volume (opens the recovery point, the disk, the partition table and
// the NTFS filesystem on the way).
func BenchmarkListNTFSRoot(b *testing.B) {
	each(b, func(b *testing.B, name string, src mount.Source, rp string) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			mnt, unmount := freshMount(b, src)
			b.StartTimer()
			ents, err := os.ReadDir(filepath.Join(mnt, fusetest.VM1, rp, "volumes", "gpt-p2"))
			b.StopTimer()
			if err != nil || len(ents) < 10 {
				b.Fatalf("%d entries, %v", len(ents), err)
			}
			unmount()
		}
	})
}

// BenchmarkSeqReadGuestFile: sequential reads of an 8 MiB incompressible
// guest file (ext4 large.bin): all of it is allocated data, unlike most of
// a sparse .raw.
func BenchmarkSeqReadGuestFile(b *testing.B) {
	each(b, func(b *testing.B, name string, src mount.Source, rp string) {
		f := filepath.Join(fusetest.VM1, rp, "volumes", "gpt-p3", "large.bin")
		b.Run("readahead", func(b *testing.B) { benchSeq(b, src, f) })
		// The same without our read-ahead (the kernel's is 128 KiB).
		b.Run("no-readahead", func(b *testing.B) {
			benchSeq(b, src, f, mount.Options{ReadAhead: -1})
		})
	})
}

// BenchmarkSeqReadSlowSource: the 8 MiB guest file over a source whose
// every read takes 10 ms (a pool on spinning disks or a network share), with
// and without read-ahead: prefetching overlaps that latency.
func BenchmarkSeqReadSlowSource(b *testing.B) {
	repo := fusetest.NewRepo(b)
	src := fusetest.LatencySource{Source: mount.DirSource{Root: repo.Root}, Delay: 10 * time.Millisecond}
	f := filepath.Join(fusetest.VM1, fusetest.VM1RP1, "volumes", "gpt-p3", "large.bin")
	b.Run("readahead", func(b *testing.B) { benchSeq(b, src, f) })
	b.Run("no-readahead", func(b *testing.B) { benchSeq(b, src, f, mount.Options{ReadAhead: -1}) })
}
