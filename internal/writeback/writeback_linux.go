// Package writeback starts the kernel writing a file's dirty pages early.
//
// A restore writes gigabytes and then fsyncs (nothing is renamed into place
// before it is durable). Left alone, the kernel starts writeback late and the
// final fsync waits for most of the file, while the CPUs that decoded it sit
// idle; started as each range is written, the disk works in parallel with
// the decoding and the fsync finds little left.
package writeback

import (
	"os"

	"golang.org/x/sys/unix"
)

// Start asks the kernel to start writing [off, off+n) of f to disk now,
// without waiting (sync_file_range SYNC_FILE_RANGE_WRITE). Errors are
// ignored: the fsync that must follow reports them.
func Start(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
