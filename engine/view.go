package engine

import (
	"time"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// RPView is the stable JSON form of a recovery point in listings (`rp list
// --json`): the pointer's summary without the manifest's chunk refs.
type RPView struct {
	ID          string        `json:"id"`
	VM          string        `json:"vm"`
	VMGUID      string        `json:"vm_guid"`
	Group       string        `json:"group"`
	Time        time.Time     `json:"time"`
	EndTime     time.Time     `json:"end_time"`
	Consistency string        `json:"consistency"`
	Host        string        `json:"host"`
	Full        bool          `json:"full"`
	Disks       []DiskSummary `json:"disks"`
	ConfigFiles int           `json:"config_files"`
	BytesRead   int64         `json:"bytes_read"`
	BytesNew    int64         `json:"bytes_new"`
	BytesStored int64         `json:"bytes_stored"`
}

// View returns the listing form of a pointer.
func (p *Pointer) View() RPView {
	d := p.Disks
	if d == nil {
		d = []DiskSummary{}
	}
	return RPView{ID: p.ID, VM: p.VM, VMGUID: p.VMGUID, Group: p.Group, Time: p.Time, EndTime: p.EndTime,
		Consistency: p.Consistency, Host: p.Host, Full: p.Full, Disks: d, ConfigFiles: p.ConfigFiles,
		BytesRead: p.BytesRead, BytesNew: p.BytesNew, BytesStored: p.BytesStored}
}

// ManifestView is a manifest without its extent maps: what `rp show
// --json` prints and what the recovery tree's vm.json shows.
type ManifestView struct {
	RPView
	Parent      string           `json:"parent,omitempty"`
	Sources     []string         `json:"sources"`
	Config      []ConfigView     `json:"config"`
	DiskDetails []DiskDetailView `json:"disk_details"`
}

// ConfigView describes one configuration file.
type ConfigView struct {
	Name   string    `json:"name"`
	Source string    `json:"source"`
	Size   int64     `json:"size"`
	MTime  time.Time `json:"mtime"`
	SHA256 string    `json:"sha256"`
}

// DiskDetailView describes one disk with its identity facts.
type DiskDetailView struct {
	Name           string         `json:"name"`
	Source         string         `json:"source"`
	Identity       vdisk.Identity `json:"identity"`
	Segments       int            `json:"segments"`
	SegmentsReused int            `json:"segments_reused"`
	Extents        int            `json:"extents"`
	Unchanged      bool           `json:"unchanged"`
	ExcludedFiles  []ExcludedFile `json:"excluded_files,omitempty"`
	ExcludedBytes  int64          `json:"excluded_bytes,omitempty"`
	Excluded       []string       `json:"excluded,omitempty"` // older manifests
	Warnings       []string       `json:"warnings,omitempty"`
	BytesAllocated int64          `json:"bytes_allocated"`
	BytesData      int64          `json:"bytes_data"`
	BytesRead      int64          `json:"bytes_read"`
	BytesNew       int64          `json:"bytes_new"`
	BytesStored    int64          `json:"bytes_stored"`
}

// View returns the summary form of a manifest.
func (m *Manifest) View() ManifestView {
	v := ManifestView{RPView: m.pointer().View(), Parent: m.Parent, Sources: m.Sources,
		Config: []ConfigView{}, DiskDetails: []DiskDetailView{}}
	v.ID = m.ID
	for _, c := range m.Config {
		v.Config = append(v.Config, ConfigView{c.Name, c.Source, c.Size, c.ModTime, c.SHA256})
	}
	for _, d := range m.Disks {
		n := 0
		for _, s := range d.Segments {
			n += len(s.Extents)
		}
		v.DiskDetails = append(v.DiskDetails, DiskDetailView{Name: d.Name, Source: d.Source, Identity: d.Identity,
			Segments: len(d.Segments), SegmentsReused: d.SegmentsReused, Extents: n, Unchanged: d.Unchanged,
			ExcludedFiles: d.ExcludedFiles, ExcludedBytes: d.ExcludedBytes, Excluded: d.Excluded, Warnings: d.Warnings,
			BytesAllocated: d.BytesAllocated, BytesData: d.BytesData,
			BytesRead: d.BytesRead, BytesNew: d.BytesNew, BytesStored: d.BytesStored})
	}
	return v
}
