//go:build unix

package chunkstore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockRepo takes an exclusive, non-blocking flock on the repository's lock
// file: one process at a time may open a repository (Badger would refuse a
// second one anyway, with a less clear error). The kernel drops the lock
// when the process dies, so a crash never leaves a stale lock.
func lockRepo(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("chunkstore: lock: %w", err)
	}
	return f, nil
}

func unlockRepo(f *os.File) {
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}
