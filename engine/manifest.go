package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// ManifestVersion is the manifest format this build writes and reads.
const ManifestVersion = 1

// Consistency levels a recovery point records.
const (
	AppConsistent   = "application-consistent"
	CrashConsistent = "crash-consistent"
)

// ChunkID is a chunk ID that reads and writes as hex in JSON.
type ChunkID chunkstore.ID

// MarshalText gives 64 hex digits.
func (c ChunkID) MarshalText() ([]byte, error) {
	b := make([]byte, 64)
	hex.Encode(b, c[:])
	return b, nil
}

// UnmarshalText parses 64 hex digits.
func (c *ChunkID) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("bad chunk ID %q", b)
	}
	_, err := hex.Decode(c[:], b)
	return err
}

func (c ChunkID) String() string { return chunkstore.ID(c).String() }

// ChunkRef is one chunk of a stored byte stream, in stream order.
type ChunkRef struct {
	ID  ChunkID `json:"id"`
	Len int64   `json:"len"`
}

// Extent maps virtual disk bytes [Off, Off+Len) to bytes [ChunkOff,
// ChunkOff+Len) of chunk ID. Bytes of the disk outside every extent are
// zeros (unallocated, or found all-zero when backed up).
type Extent struct {
	Off      int64   `json:"off"`
	Len      int64   `json:"len"`
	ID       ChunkID `json:"id"`
	ChunkOff int64   `json:"coff,omitempty"`
}

// End is the first virtual byte after the extent.
func (e Extent) End() int64 { return e.Off + e.Len }

// Segment is one SegmentSize-aligned piece of a disk's virtual space that
// held non-zero data. Hash is the keyed BLAKE3 of its extents (offsets,
// lengths, chunk IDs), so equal hashes mean equal content. (Recovery points
// before 2026-11-26 hashed the bytes instead; nothing compares hashes of
// two backups any more: the next backup reuses Extents by verifying each
// chunk's bytes against its ID, which works with either kind.)
type Segment struct {
	Off     int64    `json:"off"`
	Hash    string   `json:"hash"`
	Extents []Extent `json:"extents"`
}

// SourceFile is a file a disk was read from, with the facts that let the
// next backup skip an unchanged disk without reading it.
//
// A disk read through a differencing (checkpoint) chain lists every file
// of the chain, the leaf (Source) first and the base last, each with the
// chain facts below: the identity each file must keep when a restore to
// the original location writes the chain again, and how each child names
// its parent. Recovery points made before these facts were recorded list
// the leaf and its parent with path, size and mtime only; a restore then
// learns the chain from the files on disk (restore_chain.go). Disks
// without a parent record path, size and mtime only, as before.
type SourceFile struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`

	DiskID             vdisk.GUID `json:"disk_id,omitzero"` // this file's page-83 Virtual Disk ID
	DataWriteGUID      vdisk.GUID `json:"data_write_guid,omitzero"`
	VirtualSize        int64      `json:"virtual_size,omitempty"`
	LogicalSectorSize  uint32     `json:"logical_sector_size,omitempty"`
	PhysicalSectorSize uint32     `json:"physical_sector_size,omitempty"`
	BlockSize          uint32     `json:"block_size,omitempty"`
	// The parent locator of a child (zero for the base), as stored in the
	// file: parent_linkage, relative_path, absolute_win32_path and
	// volume_path (Windows forms, kept verbatim so a restored child names
	// its parent exactly as Hyper-V wrote it).
	ParentLinkage      vdisk.GUID `json:"parent_linkage,omitzero"`
	ParentRelativePath string     `json:"parent_relative_path,omitempty"`
	ParentAbsolutePath string     `json:"parent_absolute_win32_path,omitempty"`
	ParentVolumePath   string     `json:"parent_volume_path,omitempty"`
}

// chainFacts reports whether f carries the chain facts (recorded since
// chains are restored as chains); every chain file has a sector size.
func (f SourceFile) chainFacts() bool { return f.LogicalSectorSize != 0 }

// DiskManifest describes one backed-up virtual disk.
type DiskManifest struct {
	// Name is the source file name without extension (the recovery tree's
	// <disk>), unique within the recovery point.
	Name string `json:"name"`
	// Source is the absolute path of the (leaf) file backed up; RelDir is
	// its directory relative to the VM folder ("" for a disk given
	// directly). Restores to --to original write Source.
	Source      string         `json:"source"`
	SourceFiles []SourceFile   `json:"source_files"`
	RelDir      string         `json:"rel_dir,omitempty"`
	Identity    vdisk.Identity `json:"identity"`
	SegmentSize int64          `json:"segment_size"`
	Segments    []Segment      `json:"segments"`
	// Statistics of this backup of the disk.
	BytesAllocated int64 `json:"bytes_allocated"` // source allocation map
	BytesData      int64 `json:"bytes_data"`      // non-zero bytes stored
	BytesRead      int64 `json:"bytes_read"`
	BytesChunked   int64 `json:"bytes_chunked"` // passed through the chunker
	BytesNew       int64 `json:"bytes_new"`
	BytesStored    int64 `json:"bytes_stored"`
	// Reused is "disk" when the disk was unchanged and not read at all,
	// otherwise the number of segments whose chunk list was reused.
	Unchanged      bool `json:"unchanged,omitempty"`
	SegmentsReused int  `json:"segments_reused"`
	// ExcludedFiles lists the guest files whose data was left out (page,
	// hibernation and swap files, which restore as zeros) and
	// ExcludedBytes the allocated disk bytes that were therefore not read.
	ExcludedFiles []ExcludedFile `json:"excluded_files,omitempty"`
	ExcludedBytes int64          `json:"excluded_bytes,omitempty"`
	// Excluded is the older free-text form of ExcludedFiles
	// ("p2/pagefile.sys (N bytes)"), read from manifests of earlier
	// builds and no longer written.
	Excluded []string `json:"excluded,omitempty"`
	// Warnings are problems of this disk's backup that did not fail it.
	Warnings []string `json:"warnings,omitempty"`
}

// ExcludedFile is one guest file whose clusters a backup left out.
type ExcludedFile struct {
	// Volume is the partition index: the N of volumes/<disk>-p<N>.
	Volume int `json:"volume"`
	// Path is the file's name in the volume root, as stored there.
	Path string `json:"path"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
	// BytesExcluded is how many allocated disk bytes of the file's
	// clusters were not read (clusters the virtual disk never allocated
	// are not counted: they were not going to be stored anyway).
	BytesExcluded int64 `json:"bytes_excluded"`
}

// excludedSomething reports whether data of the disk was left out.
func (d *DiskManifest) excludedSomething() bool {
	return d.ExcludedBytes > 0 || len(d.ExcludedFiles) > 0 || len(d.Excluded) > 0
}

// ConfigFile is a VM configuration file stored byte for byte.
type ConfigFile struct {
	// Name is the path relative to the VM folder, slash-separated.
	Name    string     `json:"name"`
	Source  string     `json:"source"`
	Size    int64      `json:"size"`
	ModTime time.Time  `json:"mtime"`
	SHA256  string     `json:"sha256"`
	Chunks  []ChunkRef `json:"chunks"`
}

// Manifest is an immutable recovery point.
type Manifest struct {
	Version     int            `json:"version"`
	ID          string         `json:"id"`
	VM          string         `json:"vm"`
	VMGUID      string         `json:"vm_guid"`
	Group       string         `json:"group,omitempty"`
	Time        time.Time      `json:"time"`
	EndTime     time.Time      `json:"end_time"`
	Consistency string         `json:"consistency"`
	Host        string         `json:"host"`
	Full        bool           `json:"full"`
	Parent      string         `json:"parent,omitempty"` // RP the incremental compared with
	Sources     []string       `json:"sources"`
	Config      []ConfigFile   `json:"config"`
	Disks       []DiskManifest `json:"disks"`
	BytesRead   int64          `json:"bytes_read"`
	BytesNew    int64          `json:"bytes_new"`
	BytesStored int64          `json:"bytes_stored"`
	// Warnings of the backup that did not fail it (all disks).
	Warnings []string `json:"warnings,omitempty"`
}

// DiskSummary is the per-disk part of a Pointer.
type DiskSummary struct {
	Name        string `json:"name"`
	VirtualSize int64  `json:"virtual_size"`
	Format      string `json:"format"`
	BytesData   int64  `json:"bytes_data"`
	BytesRead   int64  `json:"bytes_read"`
	BytesNew    int64  `json:"bytes_new"`
	Unchanged   bool   `json:"unchanged,omitempty"`
}

// Pointer is the small catalog file that commits a recovery point: a
// summary for fast listing (rp list never loads manifests) and the chunks
// of the manifest.
type Pointer struct {
	Version        int           `json:"version"`
	ID             string        `json:"id"`
	VM             string        `json:"vm"`
	VMGUID         string        `json:"vm_guid"`
	Group          string        `json:"group,omitempty"`
	Time           time.Time     `json:"time"`
	EndTime        time.Time     `json:"end_time"`
	Consistency    string        `json:"consistency"`
	Host           string        `json:"host"`
	Full           bool          `json:"full"`
	Disks          []DiskSummary `json:"disks"`
	ConfigFiles    int           `json:"config_files"`
	BytesRead      int64         `json:"bytes_read"`
	BytesNew       int64         `json:"bytes_new"`
	BytesStored    int64         `json:"bytes_stored"`
	Manifest       []ChunkRef    `json:"manifest"`
	ManifestSize   int64         `json:"manifest_size"`
	ManifestSHA256 string        `json:"manifest_sha256"`
}

func (m *Manifest) pointer() *Pointer {
	p := &Pointer{
		Version: ManifestVersion, ID: m.ID, VM: m.VM, VMGUID: m.VMGUID, Group: m.Group,
		Time: m.Time, EndTime: m.EndTime, Consistency: m.Consistency, Host: m.Host, Full: m.Full,
		ConfigFiles: len(m.Config), BytesRead: m.BytesRead, BytesNew: m.BytesNew, BytesStored: m.BytesStored,
	}
	for _, d := range m.Disks {
		p.Disks = append(p.Disks, DiskSummary{Name: d.Name, VirtualSize: d.Identity.VirtualSize,
			Format: d.Identity.Format, BytesData: d.BytesData, BytesRead: d.BytesRead,
			BytesNew: d.BytesNew, Unchanged: d.Unchanged})
	}
	return p
}

// storeStream ingests b and returns its chunk refs and stats.
func storeStream(ctx context.Context, st *chunkstore.Store, b []byte) ([]ChunkRef, chunkstore.Stats, error) {
	var refs []ChunkRef
	stats, err := st.IngestBytes(ctx, b, func(r chunkstore.Ref) {
		refs = append(refs, ChunkRef{ID: ChunkID(r.ID), Len: int64(r.Length)})
	})
	return refs, stats, err
}

// loadStream reads the chunks of a stream back, checking the total size.
func loadStream(ctx context.Context, st chunkGetter, refs []ChunkRef, size int64) ([]byte, error) {
	const maxManifest = 1 << 30 // a bad pointer must not make us allocate the world
	if size < 0 || size > maxManifest {
		return nil, fmt.Errorf("stream size %d out of range: %w", size, ErrCorrupt)
	}
	out := make([]byte, 0, size)
	for _, r := range refs {
		b, err := st.Get(ctx, chunkstore.ID(r.ID))
		if err != nil {
			return nil, err
		}
		if int64(len(b)) != r.Len || int64(len(out)+len(b)) > size {
			return nil, fmt.Errorf("chunk %s: length %d, want %d: %w", r.ID, len(b), r.Len, ErrCorrupt)
		}
		out = append(out, b...)
	}
	if int64(len(out)) != size {
		return nil, fmt.Errorf("stream is %d bytes, want %d: %w", len(out), size, ErrCorrupt)
	}
	return out, nil
}

// decodeManifest parses and sanity-checks a manifest: extents sorted and
// non-overlapping within the disk, so the reader's binary search is sound.
func decodeManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w: %v", ErrCorrupt, err)
	}
	if m.Version != ManifestVersion {
		return nil, fmt.Errorf("manifest version %d (this build reads %d): %w", m.Version, ManifestVersion, ErrCorrupt)
	}
	names := map[string]bool{}
	for _, d := range m.Disks {
		// Names and relative paths become file names on restore: a
		// crafted manifest must not write outside the target.
		if d.Name == "" || d.Name != filepath.Base(d.Name) || d.Name == ".." || strings.ContainsAny(d.Name, `/\`) || names[d.Name] {
			return nil, fmt.Errorf("manifest: bad disk name %q: %w", d.Name, ErrCorrupt)
		}
		names[d.Name] = true
		if d.RelDir != "" && !filepath.IsLocal(filepath.FromSlash(d.RelDir)) {
			return nil, fmt.Errorf("manifest: disk %s: bad directory %q: %w", d.Name, d.RelDir, ErrCorrupt)
		}
		if d.Identity.VirtualSize < 0 {
			return nil, fmt.Errorf("manifest: disk %s: negative size: %w", d.Name, ErrCorrupt)
		}
		var end int64
		for _, s := range d.Segments {
			for _, e := range s.Extents {
				if e.Off < end || e.Len <= 0 || e.ChunkOff < 0 || e.Off > d.Identity.VirtualSize || e.Len > d.Identity.VirtualSize-e.Off {
					return nil, fmt.Errorf("manifest: disk %s: bad extent %+v: %w", d.Name, e, ErrCorrupt)
				}
				end = e.End()
			}
		}
	}
	for _, c := range m.Config {
		if c.Name == "" || !filepath.IsLocal(filepath.FromSlash(c.Name)) {
			return nil, fmt.Errorf("manifest: bad config file name %q: %w", c.Name, ErrCorrupt)
		}
	}
	return &m, nil
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
