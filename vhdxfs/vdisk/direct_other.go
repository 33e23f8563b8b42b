//go:build !linux

package vdisk

import "os"

// openDirectWrite: direct writes are Linux-only (direct_linux.go).
func openDirectWrite(path string) (*os.File, int64, int64) { return nil, 0, 0 }

func isInvalid(err error) bool { return false }
