package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/bench"
)

func init() { commands = append(commands, newBenchCmd) }

func newBenchCmd() *cobra.Command {
	var (
		scale    bool
		o        bench.ScaleOptions
		diskSize string
		chunkAvg string
		jsonFile string
	)
	cmd := &cobra.Command{
		Use:   "bench --scale [--fraction F] [--dir DIR] [--json FILE]",
		Short: "Simulate the index and catalog of a full server (no data)",
		Long: `With --scale, build a fraction of the chunk index a full server would hold
(--vms x --disk-size of unique data at --chunk-avg, divided by --dedup) with
the chunkstore's index technology (Badger, same options and key layout),
measure insert and lookup rates, size on disk, peak RSS and reopen time,
and extrapolate the index and the catalog (--rps recovery points per VM) to
the full server. No disk data is written.

The fleet benchmark (real backups, restores, peers) is bench/peers.sh.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !scale {
				return errors.New("bench: only --scale is implemented yet; the fleet benchmark is bench/peers.sh")
			}
			var err error
			if o.DiskSize, err = mountParseSize(diskSize); err != nil {
				return fmt.Errorf("--disk-size: %w", err)
			}
			if o.ChunkAvg, err = mountParseSize(chunkAvg); err != nil {
				return fmt.Errorf("--chunk-avg: %w", err)
			}
			if o.Dir == "" {
				d, err := os.MkdirTemp("", "vmvault-bench-scale-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				o.Dir = d
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			rep, err := bench.RunScale(ctx, o)
			if err != nil {
				return err
			}
			if err := rep.WriteTable(cmd.OutOrStdout()); err != nil {
				return err
			}
			if jsonFile != "" {
				f, err := os.Create(jsonFile)
				if err != nil {
					return err
				}
				if err := printJSON(f, rep); err != nil {
					f.Close()
					return err
				}
				return f.Close()
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return printJSON(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&scale, "scale", false, "simulate the index and catalog of a full server (required for now)")
	f.Float64Var(&o.Fraction, "fraction", bench.DefaultScaleFraction, "part of the full server's index to build, (0, 1]")
	f.StringVar(&o.Dir, "dir", "", "work directory for the index (default: a temporary directory, removed afterwards)")
	f.StringVar(&chunkAvg, "chunk-avg", "256K", "average chunk size of the repository")
	f.IntVar(&o.VMs, "vms", bench.DefaultScaleVMs, "VMs on the server")
	f.StringVar(&diskSize, "disk-size", "100G", "disk size per VM (powers of 1024)")
	f.IntVar(&o.RPs, "rps", bench.DefaultScaleRPs, "recovery points kept per VM")
	f.Float64Var(&o.Dedup, "dedup", 1.0, "dedup ratio of the data (1.0 = all unique)")
	f.StringVar(&jsonFile, "json", "", "write the report as JSON to FILE (default: JSON after the table on stdout)")
	return cmd
}
