package guest

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
)

// benchVersion keys the cached benchmark images; bump it when their
// contents change.
const benchVersion = "v1"

// bench10kTree writes 10,000 small files into dir/many.
func bench10kTree(b *testing.B, dir string) {
	must(b, os.MkdirAll(filepath.Join(dir, "many"), 0o755))
	for i := 0; i < 10000; i++ {
		must(b, os.WriteFile(filepath.Join(dir, "many", fmt.Sprintf("document-%05d.txt", i)), []byte(fmt.Sprint(i)), 0o644))
	}
}

// cachedImage builds an image once per benchVersion in os.TempDir(), since
// copying 10,000 files through an ntfs-3g mount takes a while.
func cachedImage(b *testing.B, name string, build func(out string)) string {
	out := filepath.Join(os.TempDir(), "vmvault-guest-bench-"+benchVersion+"-"+name)
	if _, err := os.Stat(out + ".done"); err == nil {
		return out
	}
	os.Remove(out)
	build(out)
	must(b, os.WriteFile(out+".done", nil, 0o644))
	return out
}

func benchListDir(b *testing.B, img string, wantType string) {
	r, size := imageFile(b, img)
	b.ResetTimer()
	for b.Loop() {
		// A fresh FS per iteration: the listing cache would otherwise
		// make every iteration after the first free.
		g, err := Open(r, size)
		if err != nil {
			b.Fatal(err)
		}
		list, err := g.ReadDir("many")
		if err != nil || len(list) != 10000 || g.Type() != wantType {
			b.Fatalf("ReadDir: %d entries, %v", len(list), err)
		}
		g.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/10000, "ns/entry")
}

// BenchmarkNTFSListDir10k: cold Open + ReadDir of a 10,000-file directory
// (MFT record of every entry read for size, mtime and link count).
func BenchmarkNTFSListDir10k(b *testing.B) {
	testenv.NeedTools(b, "mkntfs", "ntfs-3g")
	testenv.NeedFUSE(b)
	img := cachedImage(b, "ntfs10k.img", func(out string) {
		src := b.TempDir()
		bench10kTree(b, src)
		buildNTFS(b, src, 64, out)
	})
	benchListDir(b, img, "ntfs")
}

// BenchmarkExt4ListDir10k is the same on ext4 (HTree directory).
func BenchmarkExt4ListDir10k(b *testing.B) {
	testenv.NeedTools(b, "mkfs.ext4", "e2fsck")
	img := cachedImage(b, "ext4-10k.img", func(out string) {
		src := b.TempDir()
		bench10kTree(b, src)
		tmp := buildExt4(b, src)
		data, err := os.ReadFile(tmp)
		must(b, err)
		must(b, os.WriteFile(out, data, 0o644))
	})
	benchListDir(b, img, "ext4")
}

// benchBigTree writes one 64 MiB file of random bytes.
func benchBigTree(b *testing.B, dir string) {
	buf := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{9}).Read(buf)
	must(b, os.WriteFile(filepath.Join(dir, "big.bin"), buf, 0o644))
}

// benchRead reads big.bin in 128 KiB pieces (the FUSE read size) from
// `par` goroutines at once, each its own stripe: MB/s is what a mount
// reader sees, minus FUSE.
func benchRead(b *testing.B, img string, par int) {
	r, size := imageFile(b, img)
	g, err := Open(r, size)
	must(b, err)
	defer g.Close()
	f, err := g.Open("big.bin")
	must(b, err)
	b.SetBytes(f.Size())
	b.ResetTimer()
	for b.Loop() {
		var wg sync.WaitGroup
		stripe := f.Size() / int64(par)
		for w := 0; w < par; w++ {
			wg.Add(1)
			go func(off int64) {
				defer wg.Done()
				buf := make([]byte, 128<<10)
				for o := off; o < off+stripe; o += int64(len(buf)) {
					if _, err := f.ReadAt(buf, o); err != nil && err != io.EOF {
						b.Error(err)
						return
					}
				}
			}(int64(w) * stripe)
		}
		wg.Wait()
	}
}

func BenchmarkNTFSRead64MiB(b *testing.B) {
	testenv.NeedTools(b, "mkntfs", "ntfs-3g")
	testenv.NeedFUSE(b)
	img := cachedImage(b, "ntfs-big.img", func(out string) {
		src := b.TempDir()
		benchBigTree(b, src)
		buildNTFS(b, src, 128, out)
	})
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("readers=%d", par), func(b *testing.B) { benchRead(b, img, par) })
	}
}

func BenchmarkExt4Read64MiB(b *testing.B) {
	testenv.NeedTools(b, "mkfs.ext4", "e2fsck")
	img := cachedImage(b, "ext4-big.img", func(out string) {
		src := b.TempDir()
		benchBigTree(b, src)
		data, err := os.ReadFile(buildExt4Size(b, src, "160M"))
		must(b, err)
		must(b, os.WriteFile(out, data, 0o644))
	})
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("readers=%d", par), func(b *testing.B) { benchRead(b, img, par) })
	}
}
