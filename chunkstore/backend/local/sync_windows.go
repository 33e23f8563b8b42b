//go:build windows

package local

// syncDir is a no-op on Windows: directories cannot be opened for
// FlushFileBuffers through os.Open, and NTFS journals the metadata of a
// MoveFileEx rename itself.
func syncDir(dir string) error { return nil }
