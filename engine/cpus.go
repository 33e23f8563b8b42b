package engine

import "runtime"

// cpus is the number of CPUs the engine sizes its worker pools by: Go's
// default GOMAXPROCS (the CPU count, or the cgroup's CPU limit), read at
// package initialisation. That is before cmd/vmvault raises GOMAXPROCS
// above the CPU count (see IOProcs), so the pools, and the memory each
// worker holds, stay sized to the CPUs.
var cpus = runtime.GOMAXPROCS(0)

// IOProcs is the GOMAXPROCS a process running backups and restores should
// use: twice its CPUs. A goroutine in a blocking system call (an O_DIRECT
// shard write, an fsync, a source or shard read that misses the page
// cache) keeps its P until the runtime's monitor takes it back, which
// takes up to 10 ms once the monitor has backed off; with GOMAXPROCS equal
// to the CPUs, a core sat idle meanwhile although chunks were waiting. A
// trace of the reference full backup (8 GiB VHDX, 2.5 GB of data, 2 cores)
// showed one goroutine running for 41 % of the time while others were
// runnable; iowait was 10-13 % in vmstat. With GOMAXPROCS 4 the cores were
// busy 1.85-1.9 of 2 instead of 1.64, and the backup took 3.5-3.9 s
// instead of 4.1-4.5 s (interleaved runs); 6 and 8 were no better than 4.
func IOProcs() int { return 2 * cpus }

// DefaultWorkers is the number of segments a backup processes at once
// unless BackupOptions.Workers says otherwise: one more than the CPUs, so
// that while one waits for a source read (page-cache miss) the others keep
// every core busy.
func DefaultWorkers() int { return max(2, cpus+1) }
