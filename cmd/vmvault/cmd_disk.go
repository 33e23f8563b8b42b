package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/internal/copyout"
	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/guest"
)

func init() { commands = append(commands, newDiskCmd) }

func newDiskCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "disk",
		Short: "Inspect a disk file (VHDX, AVHDX chain, raw) and copy guest files out of it",
		Long: `The disk commands read a virtual disk file directly, without a repository:
identity facts, partitions and guest volumes, guest directory listings and
item-level copies. Paths inside a disk are written VOLUME/PATH, where VOLUME is
pN for partition N (p0 for a disk without a partition table), e.g. p2/Users.`,
	}
	cmd.AddCommand(newDiskInfoCmd(), newDiskLsCmd(), newDiskCpCmd())
	return cmd
}

type diskInfoJSON struct {
	Path      string           `json:"path"`
	Identity  vhdxfs.Identity  `json:"identity"`
	Allocated int64            `json:"allocated_bytes"`
	Extents   int              `json:"allocated_extents"`
	Volumes   []diskVolumeJSON `json:"volumes"`
	Warnings  []string         `json:"warnings,omitempty"`
}

type diskVolumeJSON struct {
	Name     string `json:"name"`
	Index    int    `json:"index"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	Type     string `json:"type,omitempty"`
	TypeName string `json:"type_name,omitempty"`
	Label    string `json:"label,omitempty"`
	FS       string `json:"fs,omitempty"`
}

func newDiskInfoCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info DISK",
		Short: "Show a disk's identity, allocation and guest volumes",
		Example: `  vmvault disk info "Virtual Hard Disks/web01.vhdx"
  vmvault disk info --json child.avhdx`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := vhdxfs.Open(args[0])
			if err != nil {
				return err
			}
			defer d.Close()
			vols, warns, err := vhdxfs.Volumes(d)
			if err != nil {
				return err
			}
			alloc := d.Allocated()
			info := diskInfoJSON{Path: args[0], Identity: d.Identity(), Extents: len(alloc), Warnings: warns}
			for _, e := range alloc {
				info.Allocated += e.Len
			}
			for _, v := range vols {
				vj := diskVolumeJSON{Name: fmt.Sprintf("p%d", v.Partition.Index), Index: v.Partition.Index,
					Start: v.Partition.Start, Size: v.Partition.Size, Type: v.Partition.Type,
					TypeName: v.Partition.TypeName, FS: v.FSType}
				if v.FSType != "" {
					if fsys, err := v.OpenFS(); err == nil {
						vj.Label = fsys.Label()
						fsys.Close()
					}
				}
				info.Volumes = append(info.Volumes, vj)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			id := info.Identity
			fmt.Fprintf(out, "disk:          %s\n", info.Path)
			fmt.Fprintf(out, "format:        %s\n", id.Format)
			fmt.Fprintf(out, "virtual size:  %s (%d bytes)\n", humanBytes(id.VirtualSize), id.VirtualSize)
			fmt.Fprintf(out, "allocated:     %s in %d extents\n", humanBytes(info.Allocated), info.Extents)
			if id.Format == "vhdx" {
				fmt.Fprintf(out, "disk id:       %s\n", id.DiskID)
				fmt.Fprintf(out, "data write id: %s\n", id.DataWriteGUID)
				fmt.Fprintf(out, "block size:    %s\n", humanBytes(int64(id.BlockSize)))
				if id.ChainLength > 1 {
					fmt.Fprintf(out, "chain:         %d files, parent %s\n", id.ChainLength, id.ParentPath)
				}
			}
			fmt.Fprintf(out, "sectors:       logical %d, physical %d\n", id.LogicalSectorSize, id.PhysicalSectorSize)
			for _, w := range warns {
				fmt.Fprintf(out, "warning:       %s\n", w)
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "\nVOLUME\tSTART\tSIZE\tTYPE\tFS\tLABEL")
			for _, v := range info.Volumes {
				fs := v.FS
				if fs == "" {
					fs = "(raw)"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", v.Name, v.Start, humanBytes(v.Size), v.TypeName, fs, v.Label)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// openDiskPath opens DISK and the guest filesystem named by the first element
// of spec ("p2/dir/file"), returning the filesystem and the path inside it.
func openDiskPath(disk, spec string) (vhdxfs.Disk, guest.FS, string, error) {
	d, err := vhdxfs.Open(disk)
	if err != nil {
		return nil, nil, "", err
	}
	fail := func(err error) (vhdxfs.Disk, guest.FS, string, error) {
		d.Close()
		return nil, nil, "", err
	}
	spec = strings.Trim(spec, "/")
	volName, rest, _ := strings.Cut(spec, "/")
	n, err := strconv.Atoi(strings.TrimPrefix(volName, "p"))
	if !strings.HasPrefix(volName, "p") || err != nil {
		return fail(fmt.Errorf("disk: %q: a path starts with the volume, e.g. p2/Windows (see vmvault disk info)", spec))
	}
	vols, _, err := vhdxfs.Volumes(d)
	if err != nil {
		return fail(err)
	}
	for _, v := range vols {
		if v.Partition.Index != n {
			continue
		}
		if v.FSType == "" {
			return fail(fmt.Errorf("disk: volume p%d: filesystem not readable by vmvault", n))
		}
		fsys, err := v.OpenFS()
		if err != nil {
			return fail(fmt.Errorf("disk: volume p%d: %w", n, err))
		}
		p := path.Clean(rest)
		if rest == "" {
			p = "."
		}
		return d, fsys, p, nil
	}
	return fail(fmt.Errorf("disk: no volume p%d in %s (see vmvault disk info)", n, disk))
}

func newDiskLsCmd() *cobra.Command {
	var asJSON, long bool
	cmd := &cobra.Command{
		Use:     "ls DISK VOLUME[/PATH]",
		Short:   "List a directory of a guest volume",
		Example: "  vmvault disk ls web01.vhdx p2/Users\n  vmvault disk ls --json web01.vhdx p2",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, fsys, p, err := openDiskPath(args[0], args[1])
			if err != nil {
				return err
			}
			defer d.Close()
			defer fsys.Close()
			fi, err := fsys.Stat(p)
			if err != nil {
				return fmt.Errorf("disk: %w", err)
			}
			ents := []guest.FileInfo{fi}
			if fi.IsDir() {
				if ents, err = fsys.ReadDir(p); err != nil {
					return fmt.Errorf("disk: %w", err)
				}
			}
			return printListing(cmd.OutOrStdout(), ents, asJSON, long)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&long, "long", "l", false, "show mode, size and mtime")
	return cmd
}

type listEntryJSON struct {
	Name   string `json:"name"`
	Type   string `json:"type"`
	Size   int64  `json:"size"`
	Mode   string `json:"mode"`
	MTime  string `json:"mtime"`
	Target string `json:"target,omitempty"`
}

func printListing(w io.Writer, ents []guest.FileInfo, asJSON, long bool) error {
	if asJSON {
		out := make([]listEntryJSON, 0, len(ents))
		for _, e := range ents {
			typ := "file"
			switch {
			case e.IsDir():
				typ = "dir"
			case e.Mode&os.ModeSymlink != 0:
				typ = "symlink"
			}
			out = append(out, listEntryJSON{Name: e.Name, Type: typ, Size: e.Size, Mode: e.Mode.String(),
				MTime: e.ModTime.UTC().Format("2006-01-02T15:04:05Z"), Target: e.Target})
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.AlignRight)
	for _, e := range ents {
		name := e.Name
		if e.IsDir() {
			name += "/"
		}
		if e.Target != "" {
			name += " -> " + e.Target
		}
		if long {
			fmt.Fprintf(tw, "%s\t%d\t %s\t %s\n", e.Mode, e.Size, e.ModTime.UTC().Format("2006-01-02 15:04"), name)
		} else {
			fmt.Fprintln(tw, name)
		}
	}
	return tw.Flush()
}

func newDiskCpCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cp DISK VOLUME/PATH DEST",
		Short: "Copy a guest file or folder (recursively) out of a disk",
		Long: `Copies a file, symlink or whole folder out of a guest volume, keeping
mtimes. Guest data is untrusted: names that would escape DEST are refused and
symlinks pointing outside the copied tree are skipped (and reported).`,
		Example: "  vmvault disk cp web01.vhdx p2/Users/alice/Documents ./recovered",
		Args:    cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, fsys, p, err := openDiskPath(args[0], args[1])
			if err != nil {
				return err
			}
			defer d.Close()
			defer fsys.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			st, err := copyout.Copy(ctx, fsys, p, args[2], copyout.Options{
				Skipped: func(name, reason string) {
					fmt.Fprintf(cmd.ErrOrStderr(), "skipped %s: %s\n", name, reason)
				},
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "copied %d files, %d folders, %d symlinks, %s (%d skipped)\n",
				st.Files, st.Dirs, st.Symlinks, humanBytes(st.Bytes), st.Skipped)
			return nil
		},
	}
	return cmd
}

// humanBytes formats n with binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
