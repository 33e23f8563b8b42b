package main

import (
	"math"
	"runtime/debug"

	"github.com/vmvault/vmvault/engine"
)

// backupMemoryLimit is the Go memory limit while this process runs
// backups with the given number of segment workers (0: the default, CPUs+1). A
// backup's live data is 200-280 MiB with the default 3 workers on 2 cores
// (the open pack and the packs being written, a 16 MiB source segment per
// worker with the chunks it has queued, Badger's memtables and caches);
// with GOGC alone the heap grows to twice that before a collection, and the
// reference full backup peaked at 440-540 MiB RSS (2 cores, GOMAXPROCS 4).
// Under 384 MiB it peaked at 356-365 MiB with no slower backup: the
// collector runs a little more often, and these buffers are pointer-free,
// so marking them is cheap. Each worker beyond 3 adds 64 MiB, so that
// --workers 8, or the default on a server with many cores, does not leave
// the collector running without pause at a limit its live data reached.
func backupMemoryLimit(workers int) int64 {
	if workers <= 0 {
		workers = engine.DefaultWorkers() // CPUs+1: a big server gets more
	}
	return max(384<<20, 192<<20+int64(workers)*64<<20)
}

// limitBackupMemory sets backupMemoryLimit unless a limit is already set
// (GOMEMLIMIT in the environment, or the mount's, which forwarded backups
// raise on their own: forward.go).
func limitBackupMemory(workers int) { limitMemoryUnlessSet(backupMemoryLimit(workers)) }

// limitMemoryUnlessSet sets the Go memory limit to n unless one is set
// already (GOMEMLIMIT, or a mount's).
func limitMemoryUnlessSet(n int64) {
	if debug.SetMemoryLimit(-1) == math.MaxInt64 {
		debug.SetMemoryLimit(n)
	}
}
