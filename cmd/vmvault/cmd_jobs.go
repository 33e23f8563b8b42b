package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newJobsCmd) }

func newJobsCmd() *cobra.Command {
	var (
		rf     repoFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "jobs --repo DIR [--json]",
		Short: "List backup, restore and check jobs with their result",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.check(); err != nil {
				return err
			}
			jobs, err := engine.ListJobs(rf.repo)
			if err != nil {
				return err
			}
			if jobs == nil {
				jobs = []engine.Job{}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), jobs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "START\tKIND\tVM\tRP\tRESULT\tDURATION\tREAD\tNEW\tWRITTEN\tERROR")
			for _, j := range jobs {
				dur := ""
				if !j.End.IsZero() {
					dur = j.End.Sub(j.Start).Round(time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Start.Format(time.RFC3339), j.Kind, j.VM, j.RP,
					j.Result, dur, fmtSize(j.BytesRead), fmtSize(j.BytesNew), fmtSize(j.BytesWritten), j.Error)
			}
			return tw.Flush()
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}
