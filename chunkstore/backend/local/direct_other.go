//go:build !linux

package local

import (
	"context"
	"io"
	"os"
)

// writeContents writes exactly size bytes of r to the new, empty file f.
// O_DIRECT writes (direct_linux.go) are Linux-only; elsewhere objects go
// through the page cache.
func (b *Backend) writeContents(ctx context.Context, f *os.File, r io.Reader, size int64) error {
	return copyExact(ctx, f, r, size)
}
