package engine

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchImage writes a sparse raw image of size bytes shaped like a guest
// disk: per MiB, 40% random (compressed media), 30% repetitive text-like
// data (compressible), 30% zeros or holes.
func benchImage(b *testing.B, path string, size int64) int64 {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(11, 12))
	buf := make([]byte, 1<<20)
	text := []byte("The quick brown fox jumps over the lazy dog; vmvault bench line 0123456789\n")
	var data int64
	for off := int64(0); off < size; off += int64(len(buf)) {
		switch k := rng.IntN(10); {
		case k < 4:
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		case k < 7:
			for i := range buf {
				buf[i] = text[(i+int(off>>20))%len(text)]
			}
		default:
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		data += int64(len(buf))
	}
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkBackupFull is a first full backup into an empty repository;
// MB/s is of the image's allocated data.
func BenchmarkBackupFull(b *testing.B) {
	dir := b.TempDir()
	img := filepath.Join(dir, "bench.raw")
	data := benchImage(b, img, 256<<20)
	b.SetBytes(data)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r, _ := newRepo(b)
		b.StartTimer()
		if _, err := r.Backup(context.Background(), BackupOptions{VM: "bench", Sources: []string{img}}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.Close()
		b.StartTimer()
	}
}

// BenchmarkBackupIncremental changes ~4% of the image (ten 1 MiB writes
// at random places, like files rewritten in a guest) before each backup: the disk is read and hashed, changed
// segments are chunked again, the rest reuse their chunk lists.
func BenchmarkBackupIncremental(b *testing.B) {
	dir := b.TempDir()
	img := filepath.Join(dir, "bench.raw")
	const size = 256 << 20
	data := benchImage(b, img, size)
	r, _ := newRepo(b)
	ctx := context.Background()
	if _, err := r.Backup(ctx, BackupOptions{VM: "bench", Sources: []string{img}}); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(13, 14))
	buf := make([]byte, 1<<20)
	b.SetBytes(data)
	b.ResetTimer()
	var newBytes, chunked int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		f, _ := os.OpenFile(img, os.O_WRONLY, 0)
		for n := 0; n < size/25/len(buf); n++ {
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			f.WriteAt(buf, rng.Int64N(size/int64(len(buf)))*int64(len(buf)))
		}
		f.Close()
		b.StartTimer()
		res, err := r.Backup(ctx, BackupOptions{VM: "bench", Sources: []string{img}})
		if err != nil {
			b.Fatal(err)
		}
		newBytes += res.Manifest.BytesNew
		chunked += res.Manifest.Disks[0].BytesChunked
	}
	b.ReportMetric(float64(newBytes)/float64(b.N)/(1<<20), "MiB-new/op")
	b.ReportMetric(float64(chunked)/float64(b.N)/(1<<20), "MiB-chunked/op")
}

// BenchmarkBackupUnchanged: the disk is unchanged and not read at all.
func BenchmarkBackupUnchanged(b *testing.B) {
	dir := b.TempDir()
	img := filepath.Join(dir, "bench.raw")
	data := benchImage(b, img, 256<<20)
	r, _ := newRepo(b)
	ctx := context.Background()
	if _, err := r.Backup(ctx, BackupOptions{VM: "bench", Sources: []string{img}}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(data)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.Backup(ctx, BackupOptions{VM: "bench", Sources: []string{img}}); err != nil {
			b.Fatal(err)
		}
	}
}
