package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
	"github.com/vmvault/vmvault/engine/retention"
)

func init() { commands = append(commands, newForgetCmd) }

func newForgetCmd() *cobra.Command {
	var (
		rf         repoFlags
		o          engine.ForgetOptions
		keepWithin string
		asJSON     bool
		quiet      bool
	)
	cmd := &cobra.Command{
		Use:   "forget --repo DIR (--vm NAME|--group G|--all) [--keep-last N] [--keep-daily N ...] [--keep-within DUR] [--dry-run] [RP-ID...]",
		Short: "Remove recovery points from the catalog, by retention policy or by ID",
		Long: `Forget recovery points. Which ones, per VM:

  RP-ID...        exactly these points of the one VM given with --vm.
  --keep-* flags  every point no rule keeps (restic-style policy):
                    --keep-last N      the N newest points
                    --keep-hourly N    the newest point of each of the N newest hours
                    --keep-daily N     ... days, --keep-weekly N (ISO weeks),
                    --keep-monthly N, --keep-yearly N  ... months, years
                    --keep-within DUR  every point younger than DUR (30d, 2w, 36h),
                                       counted back from the VM's newest point
                  A count of -1 means unlimited. Periods are in local time.
  neither         the retention range of the VM's protection group: points
                  younger than the group's --retention-days (counted back from
                  the newest point) are kept. With --group G, G's range for
                  its members; with --all, each VM's own group (VMs in no
                  group keep everything).

A policy always keeps each VM's newest point; explicit IDs can forget it.
IDs and --keep-* flags combine. --dry-run prints the same decisions, each
point with the rules that keep it, without changing anything.

Forgotten points vanish from listings at once; their data is reclaimed by a
later prune (vmvault prune). Every run leaves a job record (vmvault jobs).`,
		Example: `  # preview what the group's retention range would remove
  vmvault forget --repo /srv/vmvault --group prod --dry-run
  # keep 7 daily, 4 weekly and 12 monthly points of every VM
  vmvault forget --repo /srv/vmvault --all --keep-daily 7 --keep-weekly 4 --keep-monthly 12
  # keep everything from the last 30 days of web01, at least 3 points
  vmvault forget --repo /srv/vmvault --vm web01 --keep-within 30d --keep-last 3
  # forget two points by ID, then free their space
  vmvault forget --repo /srv/vmvault --vm web01 2026-11-20T020000Z 2026-11-21T020000Z
  vmvault prune --repo /srv/vmvault`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.check(); err != nil {
				return err
			}
			if keepWithin != "" {
				d, err := retention.ParseDuration(keepWithin)
				if err != nil {
					return fmt.Errorf("--keep-within: %w", err)
				}
				o.Policy.KeepWithin = d
			}
			if n := btoi(o.VM != "") + btoi(o.Group != "") + btoi(o.All); n != 1 {
				return fmt.Errorf("give exactly one of --vm, --group and --all")
			}
			o.IDs = args
			cat, err := engine.OpenCatalog(rf.repo)
			if err != nil {
				return err
			}
			rep, err := cat.Forget(o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rep)
			}
			w := cmd.OutOrStdout()
			if !quiet {
				printForget(w, rep)
			}
			verb := "forgot"
			if o.DryRun {
				verb = "would forget"
			}
			fmt.Fprintf(w, "%s %d recovery points, kept %d\n", verb, rep.Forgotten, rep.Kept)
			if rep.Forgotten > 0 && !o.DryRun {
				fmt.Fprintln(w, "run vmvault prune to free their space")
			}
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&o.VM, "vm", "", "VM name or GUID")
	cmd.Flags().StringVar(&o.Group, "group", "", "every VM of this protection group (default policy: its retention range)")
	cmd.Flags().BoolVar(&o.All, "all", false, "every VM")
	cmd.Flags().IntVar(&o.Policy.KeepLast, "keep-last", 0, "keep the N newest recovery points per VM (-1: all)")
	cmd.Flags().IntVar(&o.Policy.KeepHourly, "keep-hourly", 0, "keep the newest point of each of the N newest hours (-1: all)")
	cmd.Flags().IntVar(&o.Policy.KeepDaily, "keep-daily", 0, "keep the newest point of each of the N newest days (-1: all)")
	cmd.Flags().IntVar(&o.Policy.KeepWeekly, "keep-weekly", 0, "keep the newest point of each of the N newest ISO weeks (-1: all)")
	cmd.Flags().IntVar(&o.Policy.KeepMonthly, "keep-monthly", 0, "keep the newest point of each of the N newest months (-1: all)")
	cmd.Flags().IntVar(&o.Policy.KeepYearly, "keep-yearly", 0, "keep the newest point of each of the N newest years (-1: all)")
	cmd.Flags().StringVar(&keepWithin, "keep-within", "", "keep points younger than DUR before the newest one (e.g. 30d, 2w, 36h)")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "only show what would be forgotten, and why the rest is kept")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output (every decision with its reasons)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the totals")
	return cmd
}

// printForget prints each VM's policy and every point's fate with the
// reasons, newest first.
func printForget(w io.Writer, rep *engine.ForgetReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, v := range rep.VMs {
		group := ""
		if v.Group != "" {
			group = ", group " + v.Group
		}
		fmt.Fprintf(tw, "%s (%s%s): %s [from %s]\n", v.VM, v.VMGUID, group, v.Policy, v.PolicyFrom)
		// Newest first across both lists.
		ki, fi := 0, 0
		for ki < len(v.Keep) || fi < len(v.Forget) {
			var d engine.Decision
			verb := "keep"
			if fi >= len(v.Forget) || (ki < len(v.Keep) && !v.Keep[ki].Time.Before(v.Forget[fi].Time)) {
				d = v.Keep[ki]
				ki++
			} else {
				d, verb = v.Forget[fi], "forget"
				fi++
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", verb, d.ID, strings.Join(d.Reasons, ", "))
		}
	}
	tw.Flush()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
