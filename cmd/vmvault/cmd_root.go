package main

import (
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "vmvault",
		Short: "Back up Hyper-V VMs; mount any recovery point as files",
		Long: `vmvault backs up whole virtual machines (VHDX, AVHDX chains, raw images and
their configuration files) into a deduplicated, compressed, Reed-Solomon
protected repository, and shows every recovery point as a browsable tree of
VHDX images and guest volumes.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, c := range commands {
		root.AddCommand(c())
	}
	return root
}

// commands are the subcommand constructors; each cmd_*.go file registers its
// own in an init function, so adding a command touches one file.
var commands []func() *cobra.Command
