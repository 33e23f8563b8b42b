// Command vmvault backs up Hyper-V virtual machines into a deduplicated,
// erasure-protected repository and mounts every recovery point as a
// browsable filesystem.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "vmvault: "+err.Error())
		os.Exit(1)
	}
}
