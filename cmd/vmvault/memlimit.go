package main

import (
	"math"
	"runtime/debug"
)

// backupMemoryLimit is the Go memory limit while this process runs
// backups. A backup's live data is 200-280 MiB (the open pack and the
// packs being written, 16 MiB source segments, Badger's memtables and
// caches); with GOGC alone the heap grows to twice that before a
// collection, and the reference full backup peaked at 440-540 MiB RSS
// (2 cores, GOMAXPROCS 4). The collector runs a little more often under the
// limit, and these buffers are pointer-free, so marking them is cheap.
const backupMemoryLimit = 384 << 20

// limitBackupMemory sets backupMemoryLimit unless a limit is already set
// (GOMEMLIMIT in the environment, or the mount's, which forwarded backups
// raise on their own: forward.go).
func limitBackupMemory() {
	if debug.SetMemoryLimit(-1) == math.MaxInt64 {
		debug.SetMemoryLimit(backupMemoryLimit)
	}
}
