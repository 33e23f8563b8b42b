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
		Short: "List backup, restore, check, forget and prune jobs with their result",
		Long: `List the job records of the repository, oldest first: every backup, restore,
check, forget and prune (dry runs included, marked in --json) with its
result. A job still "running" whose process is gone, or one stopped by
SIGINT/SIGTERM, shows as interrupted. Backups the scheduler ran show what
made them due: "backup (sync)", "backup (express full)" ...

Byte counters, "-" where a kind has none:
  READ     backup: source bytes read; check: bytes read from the repository
           (manifests, and with --read-data every shard's data and parity)
  NEW      backup: bytes the repository did not have yet (after dedup)
  STORED   backup: what the new bytes took after compression (before parity)
  WRITTEN  restore: disk data and configuration file bytes written
--json has all four for every job (0 where unused), the recovery points a
forget removed, and any warnings.`,
		Example: `  vmvault jobs --repo /srv/vmvault
  vmvault jobs --repo /srv/vmvault --json | jq '.[] | select(.result != "ok")'`,
		Args: cobra.NoArgs,
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
			fmt.Fprintln(tw, "START\tKIND\tVM\tRP\tRESULT\tDURATION\tREAD\tNEW\tSTORED\tWRITTEN\tERROR")
			for _, j := range jobs {
				dur := ""
				if !j.End.IsZero() {
					dur = j.End.Sub(j.Start).Round(time.Millisecond).String()
				}
				who, result, kind := j.VM, j.Result, j.Kind
				if who == "" && j.Group != "" {
					who = "group " + j.Group
				}
				if j.Trigger != "" {
					kind += " (" + j.Trigger + ")"
				}
				switch {
				case j.Kind == "forget" && j.DryRun:
					result += fmt.Sprintf(" (dry run), %d would be forgotten", len(j.Forgotten))
				case j.Kind == "forget":
					result += fmt.Sprintf(", %d forgotten", len(j.Forgotten))
				case j.DryRun:
					result += " (dry run)"
				}
				read, nw, stored, written := jobCounters(j)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Start.Format(time.RFC3339), kind, who, j.RP,
					result, dur, read, nw, stored, written, j.Error)
			}
			return tw.Flush()
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

// jobCounters formats a job's byte counters for the table: the ones its
// kind fills, "-" for the others.
func jobCounters(j engine.Job) (read, nw, stored, written string) {
	read, nw, stored, written = "-", "-", "-", "-"
	switch j.Kind {
	case "backup":
		read, nw, stored = fmtSize(j.BytesRead), fmtSize(j.BytesNew), fmtSize(j.BytesStored)
	case "restore":
		written = fmtSize(j.BytesWritten)
	case "check":
		read = fmtSize(j.BytesRead)
	}
	return
}
