//go:build linux

package local

import (
	"context"
	"os"

	"golang.org/x/sys/unix"
)

// Prefetch implements backend.Prefetcher: POSIX_FADV_WILLNEED starts the
// kernel's read-ahead of the range into the page cache and returns without
// waiting for it, so a later ReadAt of the range finds it cached.
func (b *Backend) Prefetch(ctx context.Context, name string, off, n int64) {
	if off < 0 || n <= 0 || b.check(ctx, name) != nil {
		return
	}
	h, err := b.handles.get(name, func() (*os.File, error) { return openRegular(b.path(name)) })
	if err != nil {
		return
	}
	defer b.handles.release(h)
	rc, err := h.f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { _ = unix.Fadvise(int(fd), off, n, unix.FADV_WILLNEED) })
}
