//go:build !linux

// Package writeback starts the kernel writing a file's dirty pages early
// (Linux only; elsewhere the fsync at the end writes everything).
package writeback

import "os"

// Start does nothing on this system.
func Start(f *os.File, off, n int64) {}
