package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newCheckCmd) }

func newCheckCmd() *cobra.Command {
	var (
		rf     repoFlags
		jo     jobOpts
		o      engine.CheckOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "check --repo DIR [--read-data] [--repair] [--json]",
		Short: "Verify the repository and that every recovery point's chunks exist",
		Long: `Verify the chunk store (shard presence, headers and checksum tables; with
--read-data every block and the parity too) and the index, then load every
recovery point's manifest and check that each chunk it references exists.
--repair first rewrites damaged shards from parity and rebuilds the index.
Exits 1 when a problem remains.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if err := jo.prepare(); err != nil {
				return err
			}
			start := time.Now()
			defer func() { jo.report("check", "", "", start, 0, err) }()
			repo, err := rf.open()
			if err != nil {
				return err
			}
			defer repo.Close()
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			rep, err := repo.Check(ctx, o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(w, rep); err != nil {
					return err
				}
			} else {
				if rep.Repair != nil {
					fmt.Fprintf(w, "repair: %d packs repaired, %d lost, %d chunks lost\n",
						len(rep.Repair.Repaired), len(rep.Repair.LostPacks), len(rep.Repair.LostChunks))
				}
				fmt.Fprintf(w, "store: %s\n", rep.Store.String())
				fmt.Fprintf(w, "recovery points: %d checked, %d chunks referenced, %d with problems\n",
					rep.RecoveryPoints, rep.Chunks, len(rep.Problems))
				for _, p := range rep.Problems {
					fmt.Fprintf(w, "  %s %s: %s\n", p.VM, p.ID, p.Error)
				}
			}
			if !rep.OK() {
				return fmt.Errorf("check: repository has problems (%s; %d recovery points damaged)", rep.Store.String(), len(rep.Problems))
			}
			return nil
		},
	}
	rf.register(cmd)
	jo.registerNotify(cmd)
	cmd.Flags().BoolVar(&o.ReadData, "read-data", false, "read and verify all data and parity")
	cmd.Flags().BoolVar(&o.Repair, "repair", false, "repair damaged shards and rebuild the index")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}
