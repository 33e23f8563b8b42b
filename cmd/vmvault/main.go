// Command vmvault backs up Hyper-V virtual machines into a deduplicated,
// erasure-protected repository and mounts every recovery point as a
// browsable filesystem.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vmvault/vmvault/engine"
)

func main() {
	// More Ps than CPUs, so that goroutines blocked in shard writes and
	// source reads do not leave a core idle (engine.IOProcs says why). A
	// GOMAXPROCS set in the environment is the administrator's choice.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(engine.IOProcs())
	}
	if err := newRootCmd().Execute(); err != nil {
		var fe *forwardedExit
		if errors.As(err, &fe) {
			os.Exit(fe.code) // the mount process ran it and said everything
		}
		fmt.Fprintln(os.Stderr, "vmvault: "+err.Error())
		os.Exit(1)
	}
}
