package vhdx

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

const synthBenchSize = 256 << 20

// synthBenchSource writes 256 MiB of non-zero data to a file and reads it
// once so that it sits in the page cache, like a hot raw image.
func synthBenchSource(b *testing.B) *os.File {
	b.Helper()
	path := filepath.Join(b.TempDir(), "src.raw")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	if _, err := io.Copy(f, io.NewSectionReader(synthPattern{synthBenchSize}, 0, synthBenchSize)); err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, io.NewSectionReader(f, 0, synthBenchSize)); err != nil {
		b.Fatal(err)
	}
	return f
}

// synthBenchRead reads the synthesized file sequentially in 1 MiB pieces,
// wrapping around; the bytes counted are those handed to the caller.
func synthBenchRead(b *testing.B, src io.ReaderAt) {
	s, err := NewSynth(vdisk.Identity{VirtualSize: synthBenchSize}, src,
		[]vdisk.Extent{{Off: 0, Len: synthBenchSize}}, SynthOptions{})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	var off int64
	for i := 0; i < b.N; i++ {
		n, err := s.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			b.Fatal(err)
		}
		off += int64(n)
		if off >= s.Size() {
			off = 0
		}
	}
}

// BenchmarkSynthReadSequential: the synthesized view over a page-cached
// file (what FUSE reads of disks/<disk>.vhdx cost on top of the source).
func BenchmarkSynthReadSequential(b *testing.B) {
	synthBenchRead(b, synthBenchSource(b))
}

// BenchmarkSynthReadSequentialMem: the same over memory, isolating the
// synthesizer's own overhead from the kernel copy.
func BenchmarkSynthReadSequentialMem(b *testing.B) {
	data := make([]byte, synthBenchSize)
	if _, err := (synthPattern{synthBenchSize}).ReadAt(data, 0); err != nil {
		b.Fatal(err)
	}
	synthBenchRead(b, bytes.NewReader(data))
}

// BenchmarkSynthWriteFile: a full WriteFile (temp file, fsync, rename) of
// 256 MiB of allocated data from a page-cached source.
func BenchmarkSynthWriteFile(b *testing.B) {
	src := synthBenchSource(b)
	s, err := NewSynth(vdisk.Identity{VirtualSize: synthBenchSize}, src,
		[]vdisk.Extent{{Off: 0, Len: synthBenchSize}}, SynthOptions{})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.SetBytes(s.Size())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.WriteFile(context.Background(), filepath.Join(dir, "out.vhdx")); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSynthWriteToDiscard: the writer pipeline without a destination
// disk (source read, overlap, buffering).
func BenchmarkSynthWriteToDiscard(b *testing.B) {
	src := synthBenchSource(b)
	s, err := NewSynth(vdisk.Identity{VirtualSize: synthBenchSize}, src,
		[]vdisk.Extent{{Off: 0, Len: synthBenchSize}}, SynthOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(s.Size())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
