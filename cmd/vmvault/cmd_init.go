package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newInitCmd) }

func newInitCmd() *cobra.Command {
	var (
		rf      repoFlags
		pools   []string
		k, m    int
		encrypt bool
	)
	cmd := &cobra.Command{
		Use:   "init --repo DIR [--pool DIR,DIR...] [--data-shards K] [--parity-shards M] [--encrypt]",
		Short: "Create a repository",
		Long: `Create a repository in DIR: the chunk store (packs split into K data and M
parity shards spread over the pool directories) and the catalog of VMs and
recovery points. With --encrypt the password comes from --password-file or
$VMVAULT_PASSWORD (never from the command line).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.check(); err != nil {
				return err
			}
			o := engine.InitOptions{Pools: pools, DataShards: k, ParityShards: m}
			if !cmd.Flags().Changed("parity-shards") {
				o.ParityShards = 0 // chunkstore default
			} else if m == 0 {
				o.ParityShards = -1
			}
			if k < 0 || m < 0 {
				return errors.New("--data-shards and --parity-shards must not be negative")
			}
			if encrypt {
				pw, err := rf.password()
				if err != nil {
					return err
				}
				if pw == nil {
					return errors.New("--encrypt needs a password in $VMVAULT_PASSWORD or --password-file")
				}
				o.Password = pw
			}
			if err := engine.Init(rf.repo, o); err != nil {
				return err
			}
			enc := "unencrypted"
			if encrypt {
				enc = "encrypted"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s repository at %s\n", enc, rf.repo)
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().StringSliceVar(&pools, "pool", nil, "pool directories for shard files (default DIR/data)")
	cmd.Flags().IntVar(&k, "data-shards", 0, "data shards per pack (default 8)")
	cmd.Flags().IntVar(&m, "parity-shards", 0, "parity shards per pack (default 2)")
	cmd.Flags().BoolVar(&encrypt, "encrypt", false, "encrypt chunks with AES-256-GCM under a password")
	return cmd
}
