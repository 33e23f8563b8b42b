package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newBackupCmd) }

func newBackupCmd() *cobra.Command {
	var (
		rf     repoFlags
		jo     jobOpts
		o      engine.BackupOptions
		asJSON bool
		quiet  bool
		pf     profileFlags
		verb   bool
	)
	cmd := &cobra.Command{
		Use:   "backup --repo DIR --vm NAME [--group G] [--full] DISK.vhdx|DISK.avhdx|DISK.raw|VMDIR ...",
		Short: "Back up a VM's disks and configuration files into a recovery point",
		Long: `Back up virtual disks (VHDX, AVHDX chains flattened to guest content, raw
images) and Hyper-V VM folders (their .vhdx/.avhdx chain leaves and .vmcx,
.vmrs, .vmgs, .xml configuration files) as one recovery point of VM NAME.

Incremental by default when the VM has a recovery point: unchanged disks are
not read, unchanged 16 MiB segments are not chunked again. --full reads and
chunks everything (only chunks the repository lacks are stored).

--pre-hook/--post-hook run through sh -c (VMVAULT_VM, VMVAULT_VM_GUID and
VMVAULT_HOOK in the environment); a successful pre-hook makes the recovery
point application-consistent, otherwise it is crash-consistent.

Page files: the clusters of pagefile.sys, hiberfil.sys and swapfile.sys in
the root of the guest's NTFS volumes are left out by default (they restore as
zeros; Windows recreates them at boot). The recovery point lists each file
left out (rp show); --keep-pagefile backs them up. A volume whose page files
cannot be mapped safely is backed up whole, with a warning.

--group G adds the VM to protection group G, which must exist (vmvault group
create); a VM already in another group is refused.`,
		Example: `  vmvault backup --repo /srv/vmvault --vm web01 /vms/web01/web01.vhdx
  vmvault backup --repo /srv/vmvault --vm web01 --group prod /vms/web01
  vmvault backup --repo /srv/vmvault --vm db01 --full --keep-pagefile --pre-hook 'ssh db01 fsfreeze -f /' --post-hook 'ssh db01 fsfreeze -u /' /vms/db01`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.VM == "" {
				return fmt.Errorf("--vm is required")
			}
			if err := jo.prepare(); err != nil {
				return err
			}
			o.Limit = jo.waitN()
			if err := pf.start(); err != nil {
				return err
			}
			defer pf.stop()
			repo, err := rf.open()
			if err != nil {
				return err
			}
			defer repo.Close()
			limitBackupMemory(o.Workers)
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			o.Sources = args
			pr := newProgress(cmd.ErrOrStderr(), "backup "+o.VM, quiet || asJSON)
			o.HookOutput = cmd.ErrOrStderr()
			o.Progress = pr.update
			if !quiet && !asJSON {
				o.Logf = pr.logf
			}
			start := time.Now()
			res, err := repo.Backup(ctx, o)
			pr.finish()
			if err != nil {
				jo.report("backup", o.VM, "", start, 0, err)
				return err
			}
			jo.report("backup", o.VM, res.Pointer.ID, start, res.Pointer.BytesRead, nil)
			// Warnings reach stderr even with -q/--json (otherwise the log
			// lines printed them already): the recovery point holds data
			// that was meant to be left out.
			if o.Logf == nil {
				for _, w := range res.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
				}
			}
			if err := repo.Close(); err != nil {
				return err
			}
			p := res.Pointer
			if asJSON {
				// The recovery point as listed, plus where the time went.
				return printJSON(cmd.OutOrStdout(), struct {
					engine.RPView
					Stages engine.BackupStages `json:"stages"`
				}{rpJSONOf(p), res.Stages})
			}
			el := time.Since(start)
			fmt.Fprintf(cmd.OutOrStdout(), "recovery point %s of %s (%s): %d disks, %d config files; read %s, new %s, stored %s in %s (%.1f MiB/s)\n",
				p.ID, p.VM, p.Consistency, len(p.Disks), p.ConfigFiles, fmtSize(p.BytesRead), fmtSize(p.BytesNew),
				fmtSize(p.BytesStored), el.Round(time.Millisecond), float64(p.BytesRead)/(1<<20)/max(el.Seconds(), 1e-3))
			for _, d := range res.Manifest.Disks {
				for _, f := range d.ExcludedFiles {
					fmt.Fprintf(cmd.OutOrStdout(), "  %s: left out p%d/%s (%s)\n", d.Name, f.Volume, f.Path, fmtSize(f.BytesExcluded))
				}
			}
			if verb {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", res.Stages)
			}
			return nil
		},
	}
	rf.register(cmd)
	pf.register(cmd)
	jo.registerLimit(cmd)
	jo.registerNotify(cmd)
	cmd.Flags().StringVar(&o.VM, "vm", "", "VM name (required)")
	cmd.Flags().StringVar(&o.Group, "group", "", "add the VM to this protection group (must exist: vmvault group create)")
	cmd.Flags().BoolVar(&o.Full, "full", false, "express full: read and chunk everything")
	cmd.Flags().StringVar(&o.PreHook, "pre-hook", "", "command run (sh -c) before capture, e.g. a guest freeze")
	cmd.Flags().StringVar(&o.PostHook, "post-hook", "", "command run (sh -c) after capture, whatever happened")
	cmd.Flags().BoolVar(&o.RequireAppConsistent, "require-app-consistent", false, "fail when the pre-hook fails")
	cmd.Flags().BoolVar(&o.KeepPagefile, "keep-pagefile", false, "back up pagefile.sys/hiberfil.sys/swapfile.sys data too (by default left out of NTFS volumes, restored as zeros)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the recovery point as JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	cmd.Flags().IntVar(&o.Workers, "workers", 0, "segments processed at once (default: CPUs+1)")
	_ = cmd.Flags().MarkHidden("workers")
	cmd.Flags().BoolVarP(&verb, "verbose", "v", false, "print where the time went, stage by stage (also in --json as \"stages\")")
	return cmd
}
