package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newForgetCmd) }

func newForgetCmd() *cobra.Command {
	var (
		rf         repoFlags
		o          engine.ForgetOptions
		keepWithin string
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:   "forget --repo DIR (--vm NAME|--group G|--all) [--keep-last N] [--keep-within 30d] [--dry-run] [RP-ID...]",
		Short: "Remove recovery points from the catalog (explicitly or by retention)",
		Long: `Forget recovery points: the explicit IDs of one VM, and/or every point a
retention policy does not keep (per VM: the --keep-last N newest and all
younger than --keep-within; the newest point is always kept by a policy).
Forgotten points vanish from listings at once; their data is reclaimed by
a later prune (chunk garbage collection).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.check(); err != nil {
				return err
			}
			if keepWithin != "" {
				d, err := parseRetention(keepWithin)
				if err != nil {
					return err
				}
				o.KeepWithin = d
			}
			o.IDs = args
			cat, err := engine.OpenCatalog(rf.repo)
			if err != nil {
				return err
			}
			gone, err := cat.Forget(o)
			if err != nil {
				return err
			}
			if asJSON {
				if gone == nil {
					gone = []engine.Forgotten{}
				}
				return printJSON(cmd.OutOrStdout(), gone)
			}
			verb := "forgot"
			if o.DryRun {
				verb = "would forget"
			}
			for _, g := range gone {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s\n", verb, g.VM, g.ID)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %d recovery points\n", verb, len(gone))
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&o.VM, "vm", "", "VM name or GUID")
	cmd.Flags().StringVar(&o.Group, "group", "", "every VM of a protection group")
	cmd.Flags().BoolVar(&o.All, "all", false, "every VM")
	cmd.Flags().IntVar(&o.KeepLast, "keep-last", 0, "keep the N newest recovery points per VM")
	cmd.Flags().StringVar(&keepWithin, "keep-within", "", "keep recovery points younger than this (e.g. 30d, 36h)")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "only show what would be forgotten")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

// parseRetention accepts Go durations plus a day suffix ("30d").
func parseRetention(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("--keep-within %q: want e.g. 30d or 36h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--keep-within %q: want e.g. 30d or 36h", s)
	}
	return d, nil
}
