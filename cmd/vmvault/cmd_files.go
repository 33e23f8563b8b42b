package main

import (
	"context"
	"fmt"
	"log"
	"path"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/internal/copyout"
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/vhdxfs/guest"
)

func init() { commands = append(commands, newFilesCmd) }

func newFilesCmd() *cobra.Command {
	var rf repoFlags
	cmd := &cobra.Command{
		Use:   "files --repo DIR ls|cp ...",
		Short: "Browse and copy from the recovery tree without mounting it",
		Long: `The same tree vmvault mount shows, for machines without FUSE or for scripts.
Paths are relative to the tree's root and may go through symlinks such as
latest:

  <vm>/latest/volumes/<disk>-p<N>/Users/alice    guest files of partition N
  <vm>/<rp-id>/disks/<disk>.vhdx                 synthesized VHDX
  <vm>/<rp-id>/config/...                        configuration files

Guest data is untrusted: a copy never follows a symlink out of the copied
tree and refuses names that would escape DEST.`,
		Example: `  vmvault files --repo /srv/vmvault ls web01
  vmvault files --repo /srv/vmvault ls -l web01/latest/volumes/disk0-p2/Users
  vmvault files --repo /srv/vmvault cp web01/latest/volumes/disk0-p2/Users/alice/Documents ./recovered`,
	}
	cmd.PersistentFlags().StringVar(&rf.repo, "repo", "", "repository directory (required)")
	cmd.PersistentFlags().StringVar(&rf.passwordFile, "password-file", "", "file holding the repository password (else $VMVAULT_PASSWORD)")
	cmd.AddCommand(newFilesLsCmd(&rf), newFilesCpCmd(&rf))
	return cmd
}

// filesCacheSize is the memory budget of the files commands' tree.
const filesCacheSize = 128 << 20

// openFilesTree opens the repository and its recovery tree; close closes
// both.
func openFilesTree(cmd *cobra.Command, rf *repoFlags) (*mount.Tree, func(), error) {
	// The mount's memory bounds, at a smaller budget: a copy reads ahead
	// sequentially and needs little cache. Without them a copy of a folder
	// of 15 k files peaked at 640 MiB RSS.
	frames, blocks := treeCaches(filesCacheSize)
	rf.frameCache = frames
	limitMemoryUnlessSet(filesCacheSize + mountMemoryOverhead)
	repo, err := rf.open()
	if err != nil {
		return nil, nil, err
	}
	logger := log.New(cmd.ErrOrStderr(), "", 0)
	tree := mount.New(mount.EngineSource{Repo: repo}, mount.Options{CacheSize: blocks, Logf: logger.Printf})
	return tree, func() { tree.Close(); repo.Close() }, nil
}

// filesLs lists PATH of tree (a directory's entries, or the entry itself).
// The final element is followed when it is a symlink to a directory, like
// ls does for `latest`.
func filesLs(ctx context.Context, tree *mount.Tree, p string) ([]guest.FileInfo, error) {
	p = mount.CleanPath(p)
	if d, err := tree.Follow(ctx, p, true); err == nil && d.IsDir() {
		return tree.ReadDir(d.Path())
	}
	n, err := tree.Follow(ctx, p, false)
	if err != nil {
		return nil, err
	}
	fi, err := n.Stat(ctx)
	if err != nil {
		return nil, err
	}
	return []guest.FileInfo{fi}, nil
}

func newFilesLsCmd(rf *repoFlags) *cobra.Command {
	var asJSON, long bool
	cmd := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List a directory of the recovery tree",
		Example: `  vmvault files --repo /srv/vmvault ls
  vmvault files --repo /srv/vmvault ls --json web01/latest/volumes/disk0-p2`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := "."
			if len(args) == 1 {
				p = args[0]
			}
			tree, closeAll, err := openFilesTree(cmd, rf)
			if err != nil {
				return err
			}
			defer closeAll()
			ents, err := filesLs(cmd.Context(), tree, p)
			if err != nil {
				return err
			}
			return printListing(cmd.OutOrStdout(), ents, asJSON, long)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&long, "long", "l", false, "show mode, size and mtime")
	return cmd
}

// filesCp copies PATH of tree to dest (recursively, mtimes kept) through
// copyout. Symlinks on the way to PATH, and PATH itself when it is one
// (latest), are followed; symlinks inside the copy are recreated only when
// they stay inside it.
func filesCp(ctx context.Context, tree *mount.Tree, p, dest string, opts copyout.Options) (copyout.Stats, error) {
	n, err := tree.Follow(ctx, mount.CleanPath(p), true)
	if err != nil {
		return copyout.Stats{}, err
	}
	return copyout.Copy(ctx, tree, n.Path(), dest, opts)
}

// treeBytes sums the sizes of the regular files below p (the progress
// total). Listings are cached by the tree, so the copy does not pay twice.
func treeBytes(ctx context.Context, tree *mount.Tree, p string) int64 {
	n, err := tree.Follow(ctx, mount.CleanPath(p), true)
	if err != nil {
		return 0
	}
	fi, err := n.Stat(ctx)
	if err != nil || !fi.IsDir() {
		return max(fi.Size, 0)
	}
	var total int64
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := tree.ReadDir(dir)
		if err != nil || ctx.Err() != nil {
			return
		}
		for _, e := range ents {
			switch {
			case e.IsDir():
				walk(dir + "/" + e.Name)
			case e.Mode.IsRegular():
				total += e.Size
			}
		}
	}
	walk(n.Path())
	return total
}

func newFilesCpCmd(rf *repoFlags) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "cp PATH DEST",
		Short: "Copy a file or folder (recursively) out of the recovery tree",
		Long: `Copies a file, symlink or folder out of the tree, keeping mtimes. When DEST is
an existing directory the copy is made inside it. Files are written under a
temporary name and renamed when complete.`,
		Example: `  vmvault files --repo /srv/vmvault cp web01/latest/volumes/disk0-p2/Users/alice ./recovered
  vmvault files --repo /srv/vmvault cp web01/2026-11-20T100000Z/disks/disk0.vhdx /restore/`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			tree, closeAll, err := openFilesTree(cmd, rf)
			if err != nil {
				return err
			}
			defer closeAll()
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			pr := newProgress(cmd.ErrOrStderr(), "copy "+path.Base(mount.CleanPath(args[0])), quiet)
			total := int64(0)
			if !quiet {
				total = treeBytes(ctx, tree, args[0])
			}
			var done int64
			st, err := filesCp(ctx, tree, args[0], args[1], copyout.Options{
				Progress: func(n int64) { done += n; pr.update(done, total) },
				Skipped:  func(name, reason string) { pr.logf("skipped %s: %s", name, reason) },
			})
			pr.finish()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "copied %d files, %d folders, %d symlinks, %s (%d skipped)\n",
				st.Files, st.Dirs, st.Symlinks, humanBytes(st.Bytes), st.Skipped)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return cmd
}
