//go:build unix

package testdisks

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive flock so parallel test processes build once.
func lockFile(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }
