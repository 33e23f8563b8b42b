package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newRPCmd) }

func newRPCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rp",
		Short: "List and show recovery points",
	}
	cmd.AddCommand(newRPListCmd(), newRPShowCmd())
	return cmd
}

// rpJSONOf is the listing form of a recovery point.
func rpJSONOf(p *engine.Pointer) engine.RPView { return p.View() }

func newRPListCmd() *cobra.Command {
	var (
		rf     repoFlags
		vm     string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list --repo DIR [--vm NAME] [--json]",
		Short: "List recovery points (all VMs, or one)",
		Long: `List recovery points from the catalog. This reads only the small pointer
files: it needs no password and works while a backup runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			var vms []engine.VM
			if vm != "" {
				v, err := cat.FindVM(vm)
				if err != nil {
					return err
				}
				vms = []engine.VM{v}
			} else if vms, err = cat.ListVMs(); err != nil {
				return err
			}
			out := []engine.RPView{}
			for _, v := range vms {
				ps, err := cat.ListRecoveryPoints(v.GUID)
				if err != nil {
					return err
				}
				for _, p := range ps {
					out = append(out, rpJSONOf(p))
				}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tVM\tCONSISTENCY\tDISKS\tREAD\tNEW\tSTORED")
			for _, p := range out {
				var names []string
				for _, d := range p.Disks {
					names = append(names, d.Name)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.VM, p.Consistency, strings.Join(names, ","),
					fmtSize(p.BytesRead), fmtSize(p.BytesNew), fmtSize(p.BytesStored))
			}
			return tw.Flush()
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&vm, "vm", "", "only this VM (name or GUID)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

func newRPShowCmd() *cobra.Command {
	var (
		rf     repoFlags
		vm, id string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "show --repo DIR --vm NAME --rp ID|latest [--json]",
		Short: "Show one recovery point: disks, identity facts, configuration files",
		Long: `Show one recovery point: time, consistency, host and group; per disk its
identity facts, source, stored data, and the guest files left out (page,
hibernation and swap files: volume, path, size and bytes not backed up) with
any warning of the backup; the configuration files with their sha256.`,
		Example: `  vmvault rp show --repo /srv/vmvault --vm web01
  vmvault rp show --repo /srv/vmvault --vm web01 --rp 2026-11-26T104233Z --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if vm == "" {
				return fmt.Errorf("--vm is required")
			}
			repo, err := rf.open()
			if err != nil {
				return err
			}
			defer repo.Close()
			p, err := repo.ResolveRP(vm, id)
			if err != nil {
				return err
			}
			m, err := repo.LoadManifest(cmd.Context(), p.VMGUID, p.ID)
			if err != nil {
				return err
			}
			out := m.View()
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "recovery point %s of %s (%s)\n", p.ID, p.VM, p.VMGUID)
			fmt.Fprintf(w, "  time %s .. %s, %s, host %s, group %q, full %v, parent %q\n",
				p.Time.Format(time.RFC3339), p.EndTime.Format(time.RFC3339), p.Consistency, p.Host, p.Group, p.Full, m.Parent)
			fmt.Fprintf(w, "  read %s, new %s, stored %s\n", fmtSize(p.BytesRead), fmtSize(p.BytesNew), fmtSize(p.BytesStored))
			for _, d := range out.DiskDetails {
				fmt.Fprintf(w, "  disk %s: %s %s, disk id %s, data write guid %s, sectors %d/%d, block %d\n",
					d.Name, d.Identity.Format, fmtSize(d.Identity.VirtualSize), d.Identity.DiskID, d.Identity.DataWriteGUID,
					d.Identity.LogicalSectorSize, d.Identity.PhysicalSectorSize, d.Identity.BlockSize)
				fmt.Fprintf(w, "    source %s; data %s in %d extents, %d segments (%d reused)%s\n",
					d.Source, fmtSize(d.BytesData), d.Extents, d.Segments, d.SegmentsReused, map[bool]string{true: ", unchanged (not read)"}[d.Unchanged])
				for _, f := range d.ExcludedFiles {
					fmt.Fprintf(w, "    left out (restores as zeros): volume p%d %s, file size %s, %s not backed up\n",
						f.Volume, f.Path, fmtSize(f.Size), fmtSize(f.BytesExcluded))
				}
				for _, e := range d.Excluded {
					fmt.Fprintf(w, "    left out (restores as zeros): %s\n", e)
				}
				for _, wr := range d.Warnings {
					fmt.Fprintf(w, "    warning: %s\n", wr)
				}
			}
			for _, c := range out.Config {
				fmt.Fprintf(w, "  config %s: %s, sha256 %s\n", c.Name, fmtSize(c.Size), c.SHA256)
			}
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&vm, "vm", "", "VM name or GUID (required)")
	cmd.Flags().StringVar(&id, "rp", "latest", "recovery point ID or latest")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}
