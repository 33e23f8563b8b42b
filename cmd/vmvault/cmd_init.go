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
		comp    string
		sizes   = map[string]*string{"chunk-min": new(string), "chunk-avg": new(string), "chunk-max": new(string), "pack-size": new(string)}
	)
	cmd := &cobra.Command{
		Use:   "init --repo DIR [--pool DIR,DIR...] [--data-shards K] [--parity-shards M] [--encrypt] [--compression minlz|s2|zstd|zstd:LEVEL|none]",
		Short: "Create a repository",
		Long: `Create a repository in DIR: the chunk store (packs split into K data and M
parity shards spread over the pool directories) and the catalog of VMs and
recovery points. With --encrypt the password comes from --password-file or
$VMVAULT_PASSWORD (never from the command line).

These choices are fixed for the repository's lifetime. Compression, measured
per core on OS files in 64 KiB frames, in one run (stored/raw, encode, decode):
  minlz (default)         0.56   ~615 MB/s   ~1.2 GB/s   fastest backups and reads
  s2                      0.57   ~555 MB/s   ~1.2 GB/s   the default before MinLZ
  zstd (= zstd:1)         0.47   ~290 MB/s   ~0.76 GB/s  16% less storage, half the speed
  zstd:-3                 0.56   ~355 MB/s   ~0.76 GB/s
  none                    1.00
(zstd levels -7..-1 are zstd's fast levels; 2..22 compress more, slower.)
Chunk sizes (--chunk-min/--chunk-avg/--chunk-max, avg a power of two) and
--pack-size trade dedup granularity against index size; the defaults suit
disk images (see README "Tuning").

Examples:
  vmvault init --repo /srv/vmvault
  vmvault init --repo /srv/vmvault --encrypt --password-file /root/vmvault.pw
  vmvault init --repo /srv/vmvault --pool /mnt/d1,/mnt/d2,/mnt/d3,/mnt/d4,/mnt/d5,/mnt/d6 --data-shards 4 --parity-shards 2
  vmvault init --repo /srv/vmvault --compression zstd`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.check(); err != nil {
				return err
			}
			o := engine.InitOptions{Pools: pools, DataShards: k, ParityShards: m, Compression: comp}
			for name, v := range sizes {
				if *v == "" {
					continue
				}
				n, err := mountParseSize(*v)
				if err != nil || n <= 0 || n > 1<<30 {
					return fmt.Errorf("--%s %q: want a size like 256K or 1M", name, *v)
				}
				switch name {
				case "chunk-min":
					o.ChunkMin = int(n)
				case "chunk-avg":
					o.ChunkAvg = int(n)
				case "chunk-max":
					o.ChunkMax = int(n)
				case "pack-size":
					o.PackSize = int(n)
				}
			}
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
	cmd.Flags().StringVar(&comp, "compression", "", "minlz, s2, zstd, zstd:LEVEL (-7..-1, 1..22) or none (default minlz)")
	cmd.Flags().StringVar(sizes["chunk-min"], "chunk-min", "", "minimum chunk size (default 64K)")
	cmd.Flags().StringVar(sizes["chunk-avg"], "chunk-avg", "", "average chunk size, a power of two (default 256K)")
	cmd.Flags().StringVar(sizes["chunk-max"], "chunk-max", "", "maximum chunk size (default 2M)")
	cmd.Flags().StringVar(sizes["pack-size"], "pack-size", "", "target pack size (default 32M)")
	return cmd
}
