//go:build !linux

package local

import "context"

// Prefetch implements backend.Prefetcher; only Linux has a read-ahead hint
// wired up (prefetch_linux.go), elsewhere reads simply go to the disk.
func (b *Backend) Prefetch(ctx context.Context, name string, off, n int64) {}
