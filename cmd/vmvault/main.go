// Command vmvault backs up Hyper-V virtual machines into a deduplicated,
// erasure-protected repository and mounts every recovery point as a
// browsable filesystem.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		var fe *forwardedExit
		if errors.As(err, &fe) {
			os.Exit(fe.code) // the mount process ran it and said everything
		}
		fmt.Fprintln(os.Stderr, "vmvault: "+err.Error())
		os.Exit(1)
	}
}
