package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newPruneCmd) }

func newPruneCmd() *cobra.Command {
	var (
		rf     repoFlags
		o      engine.PruneOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "prune --repo DIR [--dry-run] [--json]",
		Short: "Delete data no recovery point references any more (after forget)",
		Long: `Collect the chunks of every remaining recovery point and let the chunk store
delete packs holding none of them (and repack mostly-dead ones). If any
manifest cannot be read, nothing is deleted. Every run leaves a job record.`,
		Example: `  vmvault forget --repo /srv/vmvault --group prod
  vmvault prune --repo /srv/vmvault --dry-run
  vmvault prune --repo /srv/vmvault`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			repo, err := rf.open()
			if err != nil {
				return err
			}
			defer repo.Close()
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			rep, err := repo.Prune(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rep)
			}
			g := rep.GC
			verb := "freed"
			if o.DryRun {
				verb = "would free"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d recovery points, %d live chunks; %d packs: %d deleted, %d repacked (%d chunks moved), %d chunks removed; %s %s\n",
				rep.RecoveryPoints, rep.LiveChunks, g.Packs, g.DeletedPacks, g.RepackedPacks, g.MovedChunks, g.DeletedChunks, verb, fmtSize(g.FreedBytes))
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "only report what would be deleted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}
