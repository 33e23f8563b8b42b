//go:build linux

package engine

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// checkNotInUse refuses a restore over a file another process holds: a
// BSD flock (what many tools take) or an OFD/POSIX byte-range lock (what
// qemu takes on its images) makes the file "in use". On Linux there is no
// mandatory locking, so a process that writes a file without locking it
// cannot be detected; Hyper-V itself runs on Windows, where the agent
// opens the files exclusively instead. A missing file is not in use.
func checkNotInUse(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w (locked by another process)", path, ErrInUse)
		}
		return fmt.Errorf("%s: flock: %w", path, err)
	}
	defer unix.Flock(fd, unix.LOCK_UN)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err == nil && lk.Type != unix.F_UNLCK {
		return fmt.Errorf("%s: %w (byte-range lock held, e.g. by qemu)", path, ErrInUse)
	}
	return nil
}
