//go:build unix

package bench

import (
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The harness runs on Linux (real tools, FUSE); these are the few system
// facts it reads, kept apart so that `vmvault` still cross-builds for
// Windows, where `vmvault bench` has nothing to run with.

// isMountpoint reports whether dir is on another device than its parent.
func isMountpoint(dir string) bool {
	var a, b syscall.Stat_t
	if syscall.Stat(dir, &a) != nil || syscall.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// selfCPU is this process's user and system CPU time so far.
func selfCPU() (user, sys time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// childMaxRSS is a finished child's peak RSS in bytes (0 if unknown).
func childMaxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024 // KiB on Linux
	}
	return 0
}
