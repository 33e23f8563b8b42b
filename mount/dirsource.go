package mount

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// DirSource is a Source over plain files, for tests, demos and looking at
// disk files with the same tree as a repository:
//
//	<Root>/<vm>/<rp-id>/<disk>.vhdx|.avhdx|.raw   disks (opened with vhdxfs.Open)
//	<Root>/<vm>/<rp-id>/config/...                configuration files
//
// The recovery point time is parsed from the ID (YYYY-MM-DDTHHMMSSZ[.N]),
// or is the directory's mtime. Names starting with "." are ignored, so a
// recovery point can be prepared under a hidden name and renamed into place.
type DirSource struct{ Root string }

var _ Source = DirSource{}

// RPIDLayout is the time layout of recovery point IDs (DESIGN.md).
const RPIDLayout = "2006-01-02T150405Z"

func (s DirSource) subdirs(dir string) ([]os.DirEntry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	var out []os.DirEntry
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e)
		}
	}
	return out, nil
}

// VMs lists the subdirectories of Root.
func (s DirSource) VMs(ctx context.Context) ([]VM, error) {
	ents, err := s.subdirs(s.Root)
	if err != nil {
		return nil, err
	}
	out := make([]VM, 0, len(ents))
	for _, e := range ents {
		out = append(out, VM{Name: e.Name(), ID: e.Name()})
	}
	return out, nil
}

// RecoveryPoints lists the subdirectories of a VM directory.
func (s DirSource) RecoveryPoints(ctx context.Context, vm VM) ([]RP, error) {
	ents, err := s.subdirs(filepath.Join(s.Root, vm.ID))
	if err != nil {
		return nil, err
	}
	out := make([]RP, 0, len(ents))
	for _, e := range ents {
		out = append(out, RP{ID: e.Name(), Time: s.rpTime(filepath.Join(s.Root, vm.ID, e.Name()), e.Name())})
	}
	return out, nil
}

func (s DirSource) rpTime(dir, id string) time.Time {
	base, _, _ := strings.Cut(id, ".")
	if t, err := time.Parse(RPIDLayout, base); err == nil {
		return t
	}
	if fi, err := os.Stat(dir); err == nil {
		return fi.ModTime().UTC()
	}
	return time.Time{}
}

// Open reads the recovery point directory.
func (s DirSource) Open(ctx context.Context, vm VM, rp RP) (Point, error) {
	dir := filepath.Join(s.Root, vm.ID, rp.ID)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	p := &dirPoint{dir: dir, time: s.rpTime(dir, rp.ID), disks: map[string]string{}}
	for _, e := range ents {
		name := e.Name()
		ext := strings.ToLower(filepath.Ext(name))
		if strings.HasPrefix(name, ".") || e.IsDir() || (ext != ".vhdx" && ext != ".avhdx" && ext != ".raw") {
			continue
		}
		p.disks[strings.TrimSuffix(name, filepath.Ext(name))] = filepath.Join(dir, name)
	}
	cfgRoot := filepath.Join(dir, "config")
	err = filepath.WalkDir(cfgRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == cfgRoot && os.IsNotExist(err) {
				return filepath.SkipDir
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(cfgRoot, path)
		p.config = append(p.config, ConfigFile{Name: filepath.ToSlash(rel), Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	m := dirManifest{VM: vm.Name, ID: rp.ID, Time: p.time}
	for _, d := range p.Disks() {
		m.Disks = append(m.Disks, dirManifestDisk{Name: d.Name, Source: p.disks[d.Name]})
	}
	for _, c := range p.config {
		m.Config = append(m.Config, c.Name)
	}
	p.manifest, _ = json.MarshalIndent(m, "", "  ")
	p.manifest = append(p.manifest, '\n')
	return p, nil
}

type dirManifest struct {
	VM     string            `json:"vm"`
	ID     string            `json:"id"`
	Time   time.Time         `json:"time"`
	Disks  []dirManifestDisk `json:"disks"`
	Config []string          `json:"config"`
}

type dirManifestDisk struct {
	Name   string `json:"name"`
	Source string `json:"source"`
}

type dirPoint struct {
	dir      string
	time     time.Time
	disks    map[string]string // name -> file
	config   []ConfigFile
	manifest []byte
}

func (p *dirPoint) ManifestJSON() []byte      { return p.manifest }
func (p *dirPoint) Time() time.Time           { return p.time }
func (p *dirPoint) ConfigFiles() []ConfigFile { return p.config }
func (p *dirPoint) Close() error              { return nil }

func (p *dirPoint) Disks() []DiskInfo {
	out := make([]DiskInfo, 0, len(p.disks))
	for name := range p.disks {
		out = append(out, DiskInfo{Name: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (p *dirPoint) OpenDisk(ctx context.Context, name string) (vdisk.Disk, error) {
	f, ok := p.disks[name]
	if !ok {
		return nil, fmt.Errorf("mount: disk %q: %w", name, fs.ErrNotExist)
	}
	return vhdxfs.Open(f)
}

func (p *dirPoint) OpenConfig(ctx context.Context, name string) (guest.File, error) {
	if !fs.ValidPath(name) {
		return nil, fmt.Errorf("mount: config %q: %w", name, fs.ErrInvalid)
	}
	f, err := os.Open(filepath.Join(p.dir, "config", filepath.FromSlash(name)))
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mount: %w", err)
	}
	return osFile{f, fi.Size()}, nil
}

type osFile struct {
	*os.File
	size int64
}

func (f osFile) Size() int64 { return f.size }
