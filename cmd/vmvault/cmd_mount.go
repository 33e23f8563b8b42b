package main

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/internal/units"
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/fusemount"
)

func init() { commands = append(commands, newMountCmd) }

func newMountCmd() *cobra.Command {
	var (
		rf         repoFlags
		allowOther bool
		debug      bool
		cacheSize  string
		readAhead  string
		pf         profileFlags
	)
	cmd := &cobra.Command{
		Use:   "mount --repo DIR MOUNTPOINT",
		Short: "Mount the repository read-only: every recovery point as browsable files",
		Long: `Mounts the whole repository read-only at MOUNTPOINT (an existing empty
directory; on Windows a drive letter like X: or a path that does not exist
yet) and serves it in the foreground until Ctrl-C or SIGTERM, which unmount
it cleanly. The tree:

  <vm>/latest                          symlink to the newest recovery point
  <vm>/<rp-id>/vm.json                 what was backed up, when, from where
  <vm>/<rp-id>/config/...              the VM's configuration files
  <vm>/<rp-id>/disks/<disk>.vhdx       a valid dynamic VHDX (attach it read-only)
  <vm>/<rp-id>/disks/<disk>.raw        the flat disk image
  <vm>/<rp-id>/volumes/<disk>-p<N>/... the guest files of partition N (p0: no
                                       partition table); volume.img when
                                       vmvault does not read the filesystem

Item-level recovery is a plain copy (cp -a keeps mtimes and symlinks). Nothing
is read until it is looked at; new recovery points appear without a remount.
A damaged chunk makes only the reads of its range fail (EIO, logged with the
chunk ID); everything else keeps working. The same tree without FUSE:
vmvault files.`,
		Example: `  vmvault mount --repo /srv/vmvault /mnt/vmvault
  cp -a /mnt/vmvault/web01/latest/volumes/disk0-p2/Users/alice/Documents ./recovered
  vmvault mount --repo /srv/vmvault --allow-other --cache-size 1G /mnt/vmvault`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			size, err := parseCacheSize(cacheSize)
			if err != nil {
				return err
			}
			ra := int64(-1)
			if readAhead != "0" {
				if ra, err = mountParseSize(readAhead); err != nil {
					return fmt.Errorf("--read-ahead %q: want a size like 8M, or 0 to disable", readAhead)
				}
			}
			// A bad mount point fails before the (slow, password-checking)
			// repository open.
			if _, err := mount.CheckMountpoint(args[0]); err != nil {
				return err
			}
			frames, blocks := treeCaches(size)
			rf.frameCache = frames
			setMountMemoryLimit(size)
			if err := pf.start(); err != nil {
				return err
			}
			defer pf.stop()
			repo, err := rf.open()
			if err != nil {
				return err
			}
			defer repo.Close()
			logger := log.New(cmd.ErrOrStderr(), "", log.LstdFlags)
			tree := mount.New(mount.EngineSource{Repo: repo}, mount.Options{CacheSize: blocks, ReadAhead: ra, Logf: logger.Printf})
			srv, err := fusemount.Mount(tree, args[0], fusemount.Options{AllowOther: allowOther, Debug: debug})
			if err != nil {
				tree.Close()
				return err
			}
			// Other vmvault commands cannot open the repository while this
			// process holds it: they run through this one (forward.go).
			// Deferred after repo.Close, so it runs before it.
			fwd, err := startRepoServer(repo, rf.repo, srv.Dir(), logger.Printf)
			if err != nil {
				logger.Printf("warning: %v; other vmvault commands cannot use the repository until it is unmounted", err)
			}
			defer fwd.Close()
			return serveMount(cmd, srv, tree, rf.repo)
		},
	}
	rf.register(cmd)
	pf.register(cmd)
	cmd.Flags().BoolVar(&allowOther, "allow-other", false, "let other users see the mount (their access is checked against the guest permissions)")
	cmd.Flags().StringVar(&cacheSize, "cache-size", "256M", "memory for decoded disk data shared by all open files (e.g. 512M, 2G)")
	cmd.Flags().StringVar(&readAhead, "read-ahead", "8M", "how far ahead sequential readers are served in the background (0 disables; helps most when the pools are on slow disks)")
	cmd.Flags().BoolVar(&debug, "debug", false, "log every FUSE request")
	cmd.Flags().MarkHidden("debug")
	return cmd
}

// serveMount waits for SIGINT/SIGTERM (or an external unmount), unmounts
// and closes the tree. With files still open the mount is detached lazily
// and the server runs until they are closed; a second signal quits at once.
func serveMount(cmd *cobra.Command, srv fusemount.Server, tree *mount.Tree, repoDir string) error {
	errw := cmd.ErrOrStderr()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	stopped := make(chan struct{})
	go func() { srv.Wait(); close(stopped) }()
	fmt.Fprintf(errw, "serving %s read-only at %s (%s); Ctrl-C unmounts\n", repoDir, srv.Dir(), fusemount.Adapter)
	select {
	case <-stopped:
		fmt.Fprintf(errw, "%s was unmounted\n", srv.Dir())
	case <-sig:
		if err := srv.Unmount(); err != nil {
			tree.Close()
			return err
		}
		select {
		case <-stopped:
		default:
			fmt.Fprintf(errw, "%s detached; waiting for open files to be closed (Ctrl-C again to quit now)\n", srv.Dir())
			select {
			case <-stopped:
			case <-sig:
				return errors.New("mount: quit with files still open")
			}
		}
	}
	return tree.Close()
}

// mountMemoryLimit is the Go memory limit of a mount process (0: none).
var mountMemoryLimit atomic.Int64

// setMountMemoryLimit bounds the mount's Go memory to the cache plus
// mountMemoryOverhead. Forwarded commands that ingest (backup) need more:
// the server raises the limit while one runs (forward.go).
func setMountMemoryLimit(cache int64) {
	mountMemoryLimit.Store(cache + mountMemoryOverhead)
	debug.SetMemoryLimit(cache + mountMemoryOverhead)
}

// treeCaches splits a recovery tree's memory budget (mount --cache-size)
// between its caches. The budget bounds the process's memory, less a fixed
// overhead: the Go heap is held at size + mountMemoryOverhead instead of
// the 2x of its live data that GOGC alone allows. The caches fill only part
// of it, so the collector has room: with the caches at the whole budget it
// ran without pause and doubled the CPU of copying a folder of small files.
// An eighth goes to the store's 64 KiB frames (what random reads decode),
// half to the tree's 1 MiB blocks.
func treeCaches(size int64) (frames, blocks int64) {
	return max(size/8, 4<<20), max(size/2, 4<<20)
}

// mountMemoryOverhead is what a mount needs beside its caches: catalog,
// manifests and extent tables of entered recovery points, guest
// filesystem metadata, FUSE request buffers, the index.
const mountMemoryOverhead = 112 << 20

// parseCacheSize reads a --cache-size (at least 4M).
func parseCacheSize(s string) (int64, error) {
	v, err := mountParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--cache-size %q: want a size like 256M or 2G", s)
	}
	if v < 4<<20 {
		return 0, fmt.Errorf("--cache-size %q: at least 4M", s)
	}
	return v, nil
}

// mountParseSize reads a size flag (units.ParseSize).
func mountParseSize(s string) (int64, error) { return units.ParseSize(s) }
