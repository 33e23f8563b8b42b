package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/bench"
)

func init() { commands = append(commands, newBenchCmd) }

func newBenchCmd() *cobra.Command {
	var (
		scale    bool
		so       bench.ScaleOptions
		diskSize string
		chunkAvg string
		jsonFile string

		vms         int
		size        string
		generations int
		churn       float64
		workdir     string
		keep        bool
		chartFile   string
		sweeps      []string
		peers       []string
		stages      []string
		quick       bool
		randRuntime time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bench [--vms N] [--size 8G] [--generations 3] [--sweep KEY=V1,V2]... [--json FILE] [--chart FILE.svg] | --scale ...",
		Short: "Measure backup, restore, mount and check on a synthetic VM fleet, against restic and borg",
		Long: `Builds a fleet of --vms VMs with real tools (qemu-img, sgdisk, mkntfs and an
ntfs-3g mount, mkfs.ext4, debugfs): dynamic VHDX disks of --size virtual bytes
with GPT, NTFS and ext4, OS-like files copied from /usr (the same in every VM),
per-VM text, random data, zero areas and a pagefile.sys, plus --generations
churn generations changing --churn of the allocated bytes each. The fleet is
cached in the work directory by its parameters.

Then runs, each as a child process so CPU seconds and peak RSS are the
stage's own: full backup, an incremental per generation, express full,
restore as VHDX and raw (vm0 checked against the source with qemu-img),
vmvault mount with a sequential read and random 4 KiB reads (fio) of vm0's
.vhdx, an item-level cp -a of a guest folder (compared with its source), and
check --read-data. restic and borg (--peers, default: those installed) run the
same backups and restores on the same files, and restic mount the reads.

--sweep KEY=V1,V2 (repeatable) reruns the backup stages once per value in a
fresh repository, other knobs at their defaults. Keys: chunk-min, chunk-avg
(min and max follow at avg/4 and avg*8 unless swept), chunk-max, compression
(what init --compression takes: minlz, s2, zstd, zstd:LEVEL, none), rs (DATA+PARITY, e.g. 8+2; 4+0 = no parity), encryption
(on/off), concurrency (backup segment workers), pack-size, cache-size (mount;
its sweep also runs the mount reads).

Output: a table on stdout, --json FILE with every stage record and the
machine, --chart FILE.svg. Needs root and /dev/fuse (the ntfs-3g fill and the
mount stages).

With --scale, instead: build a fraction of the chunk index a full server
would hold (--vms x --disk-size of unique data at --chunk-avg, divided by
--dedup) with the chunkstore's index technology, measure insert and lookup
rates, size on disk, peak RSS and reopen time, and extrapolate the index and
the catalog (--rps recovery points per VM) to the full server.`,
		Example: `  vmvault bench --json bench/out/bench.json --chart bench/out/bench.svg
  vmvault bench --quick --peers none
  vmvault bench --vms 1 --generations 1 --peers none --stages full,incr --sweep chunk-avg=512K,1M,2M
  vmvault bench --scale --fraction 0.001`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			out := cmd.OutOrStdout()
			if scale {
				var err error
				so.VMs = vms
				if so.DiskSize, err = mountParseSize(diskSize); err != nil {
					return fmt.Errorf("--disk-size: %w", err)
				}
				if so.ChunkAvg, err = mountParseSize(chunkAvg); err != nil {
					return fmt.Errorf("--chunk-avg: %w", err)
				}
				if so.Dir == "" {
					d, err := os.MkdirTemp("", "vmvault-bench-scale-")
					if err != nil {
						return err
					}
					defer os.RemoveAll(d)
					so.Dir = d
				}
				rep, err := bench.RunScale(ctx, so)
				if err != nil {
					return err
				}
				if err := rep.WriteTable(out); err != nil {
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
				fmt.Fprintln(out)
				return printJSON(out, rep)
			}

			fl := cmd.Flags()
			o := bench.Options{Command: "vmvault " + strings.Join(os.Args[1:], " ")}
			o.Fleet = bench.FleetOptions{VMs: vms, Generations: generations, Churn: churn}
			if !fl.Changed("generations") {
				o.Fleet.Generations = bench.DefaultGenerations
			}
			sz := size
			if quick {
				// A run of a minute or two: one small VM, one generation.
				if !fl.Changed("vms") {
					o.Fleet.VMs = 1
				}
				if !fl.Changed("size") {
					sz = "1G"
				}
				if !fl.Changed("generations") {
					o.Fleet.Generations = 1
				}
				if !fl.Changed("rand-runtime") {
					randRuntime = 3 * time.Second
				}
			}
			var err error
			if o.Fleet.Size, err = mountParseSize(sz); err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			o.RandRuntime = randRuntime
			for _, s := range sweeps {
				sw, err := bench.ParseSweep(s)
				if err != nil {
					return err
				}
				o.Sweeps = append(o.Sweeps, sw)
			}
			o.Stages = stages
			switch {
			case !fl.Changed("peers"):
				o.Peers = bench.InstalledPeers()
			case len(peers) == 1 && peers[0] == "none":
			default:
				o.Peers = peers
			}
			if o.Binary, err = os.Executable(); err != nil {
				return fmt.Errorf("bench: own executable: %w", err)
			}
			if workdir == "" {
				d, err := os.MkdirTemp("/var/tmp", "vmvault-bench-")
				if err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				if !keep {
					defer os.RemoveAll(d)
				} else {
					defer fmt.Fprintf(cmd.ErrOrStderr(), "bench: work directory kept: %s\n", d)
				}
				workdir = d
			}
			o.WorkDir, err = filepath.Abs(workdir)
			if err != nil {
				return err
			}
			start := time.Now()
			errw := cmd.ErrOrStderr()
			o.Logf = func(format string, a ...any) {
				fmt.Fprintf(errw, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
			}
			rep, runErr := bench.Run(ctx, o)
			if rep == nil {
				return runErr
			}
			if err := rep.WriteTable(out); err != nil {
				return err
			}
			for _, w := range []struct {
				file  string
				write func(string) error
			}{{jsonFile, rep.WriteJSONFile}, {chartFile, rep.WriteSVGFile}} {
				if w.file == "" {
					continue
				}
				if err := os.MkdirAll(filepath.Dir(w.file), 0o755); err != nil {
					return err
				}
				if err := w.write(w.file); err != nil {
					return err
				}
			}
			if runErr != nil {
				return runErr
			}
			failed := 0
			for _, s := range rep.Stages {
				if s.Error != "" {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("bench: %d stages failed (see the table)", failed)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&vms, "vms", 0, "VMs in the fleet (default 4; with --scale: VMs on the server, default 800)")
	f.StringVar(&size, "size", "8G", "virtual size of each VM's disk")
	f.IntVar(&generations, "generations", bench.DefaultGenerations, "churn generations after the first image")
	f.Float64Var(&churn, "churn", bench.DefaultChurn, "fraction of allocated bytes changed per generation")
	f.StringVar(&workdir, "workdir", "", "work directory: fleet cache, repositories, restores (default: a new directory under /var/tmp, removed at the end unless --keep; a given one is kept)")
	f.BoolVar(&keep, "keep", false, "keep the default work directory (and its fleet cache)")
	f.StringVar(&chartFile, "chart", "", "write an SVG chart (throughput per stage, stored bytes per generation) to FILE.svg")
	f.StringArrayVar(&sweeps, "sweep", nil, "KEY=V1,V2: rerun the backup stages per value (repeatable; keys: "+strings.Join(bench.SweepKeys, ", ")+")")
	f.StringSliceVar(&peers, "peers", nil, "peers to compare with: restic,borg or none (default: those installed)")
	f.StringSliceVar(&stages, "stages", nil, "stages to run (default all: "+strings.Join(bench.AllStages, ",")+"; full always runs)")
	f.BoolVar(&quick, "quick", false, "a short run: 1 VM of 1 GiB, 1 generation, 3 s of random reads (explicit flags win)")
	f.DurationVar(&randRuntime, "rand-runtime", 10*time.Second, "length of the random 4 KiB read stages")

	f.BoolVar(&scale, "scale", false, "simulate the index and catalog of a full server instead (no data)")
	f.Float64Var(&so.Fraction, "fraction", bench.DefaultScaleFraction, "--scale: part of the full server's index to build, (0, 1]")
	f.StringVar(&so.Dir, "dir", "", "--scale: work directory for the index (default: a temporary directory, removed afterwards)")
	f.StringVar(&chunkAvg, "chunk-avg", "256K", "--scale: average chunk size of the repository")
	f.StringVar(&diskSize, "disk-size", "100G", "--scale: disk size per VM (powers of 1024)")
	f.IntVar(&so.RPs, "rps", bench.DefaultScaleRPs, "--scale: recovery points kept per VM")
	f.Float64Var(&so.Dedup, "dedup", 1.0, "--scale: dedup ratio of the data (1.0 = all unique)")
	f.StringVar(&jsonFile, "json", "", "write the report as JSON to FILE (--scale without it: JSON after the table on stdout)")
	return cmd
}
