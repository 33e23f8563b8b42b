//go:build linux

package vdisk

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openDirectWrite opens path again for writing with O_DIRECT and returns the
// memory and offset alignment direct I/O needs there (statx
// STATX_DIOALIGN, Linux 6.1+; 4 KiB, which every device takes, where the
// kernel does not say).
func openDirectWrite(path string) (*os.File, int64, int64) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, 0, 0
	}
	mem, off := int64(4096), int64(4096)
	var st unix.Statx_t
	if unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st) == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
		if st.Dio_mem_align == 0 || st.Dio_offset_align == 0 {
			f.Close() // the file system says: no O_DIRECT for this file
			return nil, 0, 0
		}
		mem, off = max(mem, int64(st.Dio_mem_align)), max(off, int64(st.Dio_offset_align))
	}
	return f, mem, off
}

// isInvalid: the errors with which file systems turn down a direct write
// (EINVAL: alignment or no O_DIRECT; EOPNOTSUPP from some FUSE and network
// file systems).
func isInvalid(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP)
}
