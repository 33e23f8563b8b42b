//go:build cgo

package chunkstore

import (
	"fmt"
	"sync"

	czstd "github.com/DataDog/zstd"
)

// With cgo, zstd is the C library (DataDog/zstd bundles its sources, so no
// system package is needed): 1.5x klauspost's speed at level 1 here, real
// negative levels, and 1.2-1.4x its decoding speed. Frames are standard, so
// a repository written by either build reads with the other
// (TestZstdImplementationsInterop).

// zstdImpl names the zstd implementation compiled in (for reports).
const zstdImpl = "C libzstd 1.5.7 (DataDog/zstd, cgo)"

// cZstd keeps one C context per concurrent user: a context is not safe for
// concurrent use, and creating one per frame would cost more than the
// frame.
type cZstd struct {
	level int
	ctxs  sync.Pool // czstd.Ctx
}

func newCZstd(level int) *cZstd {
	c := &cZstd{level: level}
	c.ctxs.New = func() any { return czstd.NewCtx() }
	return c
}

func (c *cZstd) method() byte { return methodZstd }

func (c *cZstd) compress(dst, src []byte) []byte {
	ctx := c.ctxs.Get().(czstd.Ctx)
	defer c.ctxs.Put(ctx)
	out, err := ctx.CompressLevel(dst, src, c.level)
	if err != nil {
		// Only a bad level or an allocation failure can get here; storing
		// the frame raw is always correct.
		return nil
	}
	return out
}

func (c *cZstd) decode(dst, src []byte) ([]byte, error) {
	if len(dst) == 0 {
		return dst, checkZstdFrame(src, 0)
	}
	if err := checkZstdFrame(src, len(dst)); err != nil {
		return nil, err
	}
	ctx := c.ctxs.Get().(czstd.Ctx)
	defer c.ctxs.Put(ctx)
	n, err := ctx.DecompressInto(dst, src)
	if err != nil {
		return nil, err
	}
	if n != len(dst) {
		return nil, fmt.Errorf("zstd: decoded %d bytes, want %d", n, len(dst))
	}
	return dst, nil
}

func (c *cZstd) close() {}

func newZstdCompressor(level, frameSize, concurrency int) (frameCompressor, error) {
	return newCZstd(level), nil
}

func newZstdDecoder(concurrency int) (zstdDecoder, error) { return newCZstd(0), nil }
