//go:build !linux

package engine

import "os"

// startWriteback does nothing here: the fsync at the end writes everything.
func startWriteback(f *os.File, off, n int64) {}
