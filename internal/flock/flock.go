// Package flock takes advisory whole-file locks that the kernel releases
// when the holding process dies, so a crash never leaves a stale lock.
//
// A lock belongs to an open file, not to a process or goroutine: two Locks
// of the same path exclude each other within one process too, and a Lock
// is not re-entrant (taking it again while holding it waits for itself).
//
// Unix uses flock(2) (BSD locks; not shared with fcntl byte-range locks),
// Windows LockFileEx; elsewhere only the lock file is created and nothing
// is excluded.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// ErrLocked is returned by TryLock, and by Lock when its wait ends, while
// another holder has the lock.
var ErrLocked = errors.New("locked by another process")

// Lock is a held lock. Unlock releases it (closing the file).
type Lock struct{ f *os.File }

// TryLock takes the exclusive lock on path (created 0600 if missing)
// without waiting: ErrLocked when someone else holds it.
func TryLock(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("flock: %w", err)
	}
	ok, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("flock: %s: %w", path, err)
	}
	if !ok {
		f.Close()
		return nil, ErrLocked
	}
	return &Lock{f: f}, nil
}

// Wait takes the exclusive lock on path, polling until it is free, ctx is
// done or timeout (0: no limit) has passed; then it returns ErrLocked (or
// ctx's error). Meant for locks held briefly by every holder.
func Wait(ctx context.Context, path string, timeout time.Duration) (*Lock, error) {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	delay := time.Millisecond
	for {
		l, err := TryLock(path)
		if !errors.Is(err, ErrLocked) {
			return l, err
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil, ErrLocked
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// Unlock releases the lock. Nil-safe and idempotent.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	unlock(l.f)
	err := l.f.Close()
	l.f = nil
	return err
}
