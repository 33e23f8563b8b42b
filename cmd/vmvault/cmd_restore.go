package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newRestoreCmd) }

func newRestoreCmd() *cobra.Command {
	var (
		rf       repoFlags
		jo       jobOpts
		o        engine.RestoreOptions
		vms      []string
		parallel int
		quiet    bool
		pf       profileFlags
	)
	cmd := &cobra.Command{
		Use:   "restore --repo DIR --vm NAME --rp ID|latest --to DIR|original [--format vhdx|raw]",
		Short: "Restore a recovery point's disks and configuration files",
		Long: `Restore every disk of a recovery point as a dynamic sparse VHDX (same disk
ID, DataWriteGuid, sector sizes and virtual size as the source) or a sparse
raw image, plus the configuration files, under DIR (the VM folder layout is
kept: "Virtual Hard Disks/<disk>.vhdx", "Virtual Machines/<guid>.vmcx").

--to original replaces the VM's original files (in their source format);
--to DIR refuses existing files unless --force. Either way, every file is
written completely beside its target first and renamed over it
only when all are written, under a journal in the repository: a restore
killed midway is finished by the next restore, check or backup, which puts
the originals back unchanged or, when the kill came after the commit point,
completes the restore; never a mix. With --to original, a file locked by
another process (flock, or a byte-range lock as qemu takes) counts as in use
and is refused unless --force.

A disk that was a checkpoint chain (base .vhdx plus .avhdx differencing
disks; backed up flattened from the leaf) is restored --to original as a
chain: the data goes into the base file, every .avhdx becomes an empty
differencing disk with its own disk ID and its parent locator as before, so
the VM's configuration and checkpoint tree still fit and deleting a
checkpoint merges nothing. Every checkpoint of that chain then shows the
restored point: the backup holds the flattened disk, not each checkpoint's
own state. --to DIR writes the flattened disk as one file.

Several --vm (or --vm A,B) restore the latest points of several VMs,
--parallel at a time, each into DIR/<vm>. --limit takes a rate (50MiB/s) or
a schedule ("Mon-Fri 08:00-18:00=20MiB/s,*=0"); --notify mailto:ADDR or
https://URL reports the result.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(vms) == 0 {
				return fmt.Errorf("--vm is required")
			}
			if o.To == "" {
				return fmt.Errorf("--to is required (a directory or original)")
			}
			if len(vms) > 1 && o.RP != "latest" {
				return fmt.Errorf("--rp must be latest when restoring several VMs")
			}
			if err := jo.prepare(); err != nil {
				return err
			}
			o.Limit = jo.waitN() // one budget shared by the parallel restores
			if err := pf.start(); err != nil {
				return err
			}
			defer pf.stop()
			repo, err := rf.open()
			if err != nil {
				return err
			}
			defer repo.Close()
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			label := "restore " + strings.Join(vms, ",")
			pr := newProgress(cmd.ErrOrStderr(), label, quiet)
			// One bar for all VMs: the sum of their progress.
			var mu sync.Mutex
			done, total := make([]int64, len(vms)), make([]int64, len(vms))
			start := time.Now()
			results := make([]*engine.RestoreResult, len(vms))
			errs := make([]error, len(vms))
			sem := make(chan struct{}, max(1, parallel))
			var wg sync.WaitGroup
			for i, vm := range vms {
				vo := o
				vo.VM = vm
				if len(vms) > 1 && o.To != engine.RestoreOriginal {
					vo.To = filepath.Join(o.To, vm)
				}
				vo.Progress = func(d, t int64) {
					mu.Lock()
					done[i], total[i] = d, t
					var sd, st int64
					for k := range done {
						sd, st = sd+done[k], st+total[k]
					}
					mu.Unlock()
					pr.update(sd, st)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					vstart := time.Now()
					results[i], errs[i] = repo.Restore(ctx, vo)
					rp, n := vo.RP, int64(0)
					if results[i] != nil {
						rp, n = results[i].Manifest.ID, results[i].BytesWritten
					}
					jo.report("restore", vm, rp, vstart, n, errs[i])
				}()
			}
			wg.Wait()
			pr.finish()
			w := cmd.OutOrStdout()
			var firstErr error
			failed := 0
			for i, res := range results {
				if errs[i] != nil {
					failed++
					if firstErr == nil {
						firstErr = errs[i]
					}
					continue
				}
				for _, f := range res.Files {
					fmt.Fprintln(w, f)
				}
				fmt.Fprintf(w, "restored %s %s: %d files, %s of disk data in %s\n", res.Manifest.VM, res.Manifest.ID,
					len(res.Files), fmtSize(res.BytesWritten), time.Since(start).Round(time.Millisecond))
			}
			if failed > 1 {
				return fmt.Errorf("%d of %d restores failed; first: %w", failed, len(vms), firstErr)
			}
			return firstErr
		},
	}
	rf.register(cmd)
	pf.register(cmd)
	jo.registerLimit(cmd)
	jo.registerNotify(cmd)
	cmd.Flags().StringSliceVar(&vms, "vm", nil, "VM name or GUID (required; several: each goes to DIR/<vm>)")
	cmd.Flags().IntVar(&parallel, "parallel", 2, "restore this many VMs at once")
	cmd.Flags().StringVar(&o.RP, "rp", "latest", "recovery point ID or latest")
	cmd.Flags().StringSliceVar(&o.Disks, "disk", nil, "restore only this disk (repeatable; no configuration files)")
	cmd.Flags().StringVar(&o.To, "to", "", "target directory, or original")
	cmd.Flags().StringVar(&o.Format, "format", "vhdx", "disk format in a directory: vhdx or raw")
	cmd.Flags().BoolVar(&o.Force, "force", false, "overwrite existing files / restore over files in use")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}
