package engine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// configExts are the Hyper-V configuration files a VM folder carries
// (configuration, runtime state, guest state, legacy XML configuration).
var configExts = map[string]bool{".vmcx": true, ".vmrs": true, ".vmgs": true, ".xml": true}

func isDiskFile(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".vhdx" || ext == ".avhdx"
}

// sourcePlan is what a backup will read, found from the command line
// before anything is opened (the pre-hook runs between planning and
// opening, so the disks are opened in their frozen state).
type sourcePlan struct {
	args    []string // absolute source arguments
	disks   []plannedDisk
	configs []plannedConfig
	vmGUID  string // from a <GUID>.vmcx file name, "" if none
}

type plannedDisk struct {
	path   string // absolute
	relDir string // directory relative to the VM folder; "" for a direct disk
	// inFolder disks may be the parent of another disk of the same folder
	// and are then skipped (only chain leaves are backed up).
	inFolder bool
}

type plannedConfig struct {
	path string
	rel  string // slash-separated path relative to the VM folder
}

// planSources classifies each argument: a directory is a Hyper-V VM
// folder (every .vhdx/.avhdx in it, normally under "Virtual Hard Disks",
// plus its configuration files), anything else a disk file (VHDX, AVHDX
// or raw image).
func planSources(args []string) (*sourcePlan, error) {
	if len(args) == 0 {
		return nil, errors.New("engine: backup: no source given")
	}
	p := &sourcePlan{}
	seen := map[string]bool{}
	for _, a := range args {
		abs, err := filepath.Abs(a)
		if err != nil {
			return nil, fmt.Errorf("engine: backup: %w", err)
		}
		p.args = append(p.args, abs)
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("engine: backup: source: %w", err)
		}
		if !fi.IsDir() {
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("engine: backup: source %s: not a regular file", a)
			}
			if !seen[abs] {
				seen[abs] = true
				p.disks = append(p.disks, plannedDisk{path: abs})
			}
			continue
		}
		err = filepath.WalkDir(abs, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !d.Type().IsRegular() || strings.HasPrefix(d.Name(), ".") {
				return nil
			}
			rel, err := filepath.Rel(abs, path)
			if err != nil {
				return err
			}
			switch ext := strings.ToLower(filepath.Ext(path)); {
			case isDiskFile(path):
				if !seen[path] {
					seen[path] = true
					dir := filepath.ToSlash(filepath.Dir(rel))
					if dir == "." {
						dir = ""
					}
					p.disks = append(p.disks, plannedDisk{path: path, relDir: dir, inFolder: true})
				}
			case configExts[ext]:
				p.configs = append(p.configs, plannedConfig{path: path, rel: filepath.ToSlash(rel)})
				if ext == ".vmcx" {
					if g, err := vdisk.ParseGUID(strings.TrimSuffix(d.Name(), filepath.Ext(d.Name()))); err == nil {
						p.vmGUID = g.String()
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("engine: backup: scan %s: %w", a, err)
		}
	}
	// A .vmcx given as a file argument is configuration, not a disk.
	var disks []plannedDisk
	for _, d := range p.disks {
		ext := strings.ToLower(filepath.Ext(d.path))
		if configExts[ext] {
			p.configs = append(p.configs, plannedConfig{path: d.path, rel: filepath.Base(d.path)})
			if g, err := vdisk.ParseGUID(strings.TrimSuffix(filepath.Base(d.path), filepath.Ext(d.path))); err == nil && ext == ".vmcx" {
				p.vmGUID = g.String()
			}
			continue
		}
		disks = append(disks, d)
	}
	p.disks = disks
	if len(p.disks) == 0 && len(p.configs) == 0 {
		return nil, fmt.Errorf("engine: backup: no disks or configuration files in %s", strings.Join(args, " "))
	}
	return p, nil
}

// openDisk is an opened source disk.
type openDisk struct {
	plannedDisk
	name  string
	disk  vdisk.Disk
	files []SourceFile
}

// openDisks opens every planned disk and drops the folder disks that are
// the parent of another (a checkpoint chain is backed up once, through its
// leaf, flattened). On error everything opened is closed.
func openDisks(p *sourcePlan) (out []*openDisk, err error) {
	defer func() {
		if err != nil {
			for _, d := range out {
				d.disk.Close()
			}
			out = nil
		}
	}()
	for _, pd := range p.disks {
		d, err := vhdxfs.Open(pd.path)
		if err != nil {
			return out, fmt.Errorf("engine: backup: %s: %w", pd.path, err)
		}
		od := &openDisk{plannedDisk: pd, disk: d,
			name: strings.TrimSuffix(filepath.Base(pd.path), filepath.Ext(pd.path))}
		out = append(out, od)
		od.files = sourceFiles(pd.path, d)
	}
	// Drop folder disks that another disk names as its parent.
	isParent := func(od *openDisk) bool {
		fi, err := os.Stat(od.path)
		if err != nil {
			return false
		}
		for _, o := range out {
			if pp := o.disk.Identity().ParentPath; pp != "" && o != od {
				if pfi, err := os.Stat(pp); err == nil && os.SameFile(fi, pfi) {
					return true
				}
			}
		}
		return false
	}
	var leaves []*openDisk
	for _, od := range out {
		if od.inFolder && isParent(od) {
			od.disk.Close()
			continue
		}
		leaves = append(leaves, od)
	}
	out = leaves
	sort.SliceStable(out, func(i, j int) bool { return out[i].name < out[j].name })
	for i := 1; i < len(out); i++ {
		if out[i].name == out[i-1].name {
			return out, fmt.Errorf("engine: backup: two disks named %q (%s, %s): rename one", out[i].name, out[i-1].path, out[i].path)
		}
	}
	return out, nil
}

// chainLister is a disk read through a differencing chain that can list
// its files (vhdx.Disk).
type chainLister interface {
	Chain() []vhdx.ChainFile
}

// sourceFiles lists the files a disk is read from. A differencing chain
// records every file, leaf first, with the facts a restore to the original
// location needs to write the chain again (SourceFile); a disk without
// parent records its one file as before, so the unchanged-disk test of
// the next backup still matches recovery points of earlier builds.
func sourceFiles(path string, d vdisk.Disk) []SourceFile {
	cl, ok := d.(chainLister)
	if !ok || d.Identity().ChainLength <= 1 {
		files := []SourceFile{statFile(path)}
		if pp := d.Identity().ParentPath; pp != "" {
			files = append(files, statFile(pp))
		}
		return files
	}
	chain := cl.Chain()
	files := make([]SourceFile, 0, len(chain))
	for i, c := range chain {
		p := c.Path
		if i == 0 {
			p = path // as given, like Source
		}
		sf := statFile(p)
		sf.DiskID, sf.DataWriteGUID, sf.VirtualSize = c.DiskID, c.DataWriteGUID, c.VirtualSize
		sf.LogicalSectorSize, sf.PhysicalSectorSize, sf.BlockSize = c.LogicalSectorSize, c.PhysicalSectorSize, c.BlockSize
		if loc := c.ParentLocator; loc != nil {
			// The reader opened the parent only after matching it with
			// parent_linkage (or parent_linkage2): record the one that
			// matched, which is the parent's DataWriteGuid.
			if i+1 < len(chain) {
				sf.ParentLinkage = chain[i+1].DataWriteGUID
			}
			sf.ParentRelativePath = loc["relative_path"]
			sf.ParentAbsolutePath = loc["absolute_win32_path"]
			sf.ParentVolumePath = loc["volume_path"]
		}
		files = append(files, sf)
	}
	return files
}

func statFile(path string) SourceFile {
	sf := SourceFile{Path: path}
	if fi, err := os.Stat(path); err == nil {
		sf.Size = fi.Size()
		sf.ModTime = fi.ModTime().UnixNano()
	}
	return sf
}
