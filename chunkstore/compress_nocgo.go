//go:build !cgo

package chunkstore

// Without cgo, zstd is klauspost/compress's: negative ("fast") levels
// compress like level 1 there.

func newZstdCompressor(level, frameSize, concurrency int) (frameCompressor, error) {
	return newGoZstdCompressor(level, frameSize, concurrency)
}

func newZstdDecoder(concurrency int) (zstdDecoder, error) { return newGoZstdDecoder(concurrency) }

// zstdImpl names the zstd implementation compiled in (for reports).
const zstdImpl = "klauspost/compress (pure Go)"
