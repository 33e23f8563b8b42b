package engine

// Restoring a checkpoint chain to its original location.
//
// A disk backed up through a differencing chain (base .vhdx plus .avhdx
// checkpoints) is stored flattened: the recovery point holds the guest
// bytes the leaf showed, not each checkpoint's own state. The VM's
// configuration (.vmcx) and its checkpoint tree still name every file of
// the chain, and the leaf must stay a differencing disk (deleting a
// checkpoint merges a child into its parent). So a restore --to original
// writes the flattened data into the BASE file (a dynamic VHDX with the
// base's disk ID and sector sizes) and every descendant as an EMPTY
// differencing VHDX (all blocks NOT_PRESENT, reads fall through) with its
// own disk ID and a parent locator naming its parent's new DataWriteGuid
// and the paths it named before. The VM reads exactly the restored point
// through its unchanged configuration, merges are no-ops, and every
// checkpoint of the chain shows the restored point. All files go through
// the journaled commit of restore_commit.go like any other restore item.

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// chainFiles returns the files of d's checkpoint chain, leaf first and base
// last, with the facts needed to write it again; nil when d has no parent.
// Recovery points of earlier builds recorded only the leaf and its
// parent's path: the chain is then read from the files at the original
// location, accepted only when its leaf is the disk backed up (same disk
// ID and chain length, the same parent path).
func chainFiles(d *DiskManifest) ([]SourceFile, error) {
	if d.Identity.ChainLength <= 1 {
		return nil, nil
	}
	files := d.SourceFiles
	recorded := len(files) == d.Identity.ChainLength
	for _, f := range files {
		recorded = recorded && f.chainFacts()
	}
	if !recorded {
		var err error
		if files, err = chainFromDisk(d); err != nil {
			return nil, fmt.Errorf("engine: restore: disk %s is a %d-file checkpoint chain, and this recovery point (made by an older vmvault) does not record its files; %w; restore it with --to DIR instead",
				d.Name, d.Identity.ChainLength, err)
		}
	}
	if err := checkChain(d, files); err != nil {
		return nil, err
	}
	return files, nil
}

// checkChain rejects a recorded chain that cannot be written back safely:
// a leaf other than the disk's source, relative or repeated paths, a
// child without linkage or locator path, sector sizes that differ.
func checkChain(d *DiskManifest, files []SourceFile) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("engine: restore: disk %s: chain %s: %w", d.Name, fmt.Sprintf(format, a...), ErrCorrupt)
	}
	if files[0].Path != d.Source {
		return bad("leaf %s is not the disk's source %s", files[0].Path, d.Source)
	}
	seen := map[string]bool{}
	for i, f := range files {
		if !filepath.IsAbs(f.Path) || seen[filepath.Clean(f.Path)] {
			return bad("file %q is relative or repeated", f.Path)
		}
		seen[filepath.Clean(f.Path)] = true
		if f.LogicalSectorSize != files[0].LogicalSectorSize {
			return bad("%s has logical sector size %d, the leaf %d", f.Path, f.LogicalSectorSize, files[0].LogicalSectorSize)
		}
		child := i < len(files)-1
		if hasLoc := f.ParentRelativePath != "" || f.ParentAbsolutePath != "" || f.ParentVolumePath != ""; child && (f.ParentLinkage.IsZero() || !hasLoc) {
			return bad("%s records no parent linkage or locator path", f.Path)
		}
	}
	return nil
}

// chainFromDisk reads the chain facts from the files at d's original
// location (see chainFiles).
func chainFromDisk(d *DiskManifest) ([]SourceFile, error) {
	disk, err := vhdx.Open(d.Source)
	if err != nil {
		return nil, fmt.Errorf("reading the chain from the original files failed: %w", err)
	}
	defer disk.Close()
	files := sourceFiles(d.Source, disk)
	id := disk.Identity()
	switch {
	case id.ChainLength != d.Identity.ChainLength:
		return nil, fmt.Errorf("the files at the original location now form a %d-file chain", id.ChainLength)
	case id.DiskID != d.Identity.DiskID:
		return nil, fmt.Errorf("%s now has disk ID %s, the backup %s", d.Source, id.DiskID, d.Identity.DiskID)
	case len(d.SourceFiles) > 1 && len(files) > 1 && filepath.Clean(d.SourceFiles[1].Path) != filepath.Clean(files[1].Path):
		return nil, fmt.Errorf("%s now names parent %s, at backup %s", d.Source, files[1].Path, d.SourceFiles[1].Path)
	}
	return files, nil
}

// chainDataWriteGUID is the DataWriteGuid the restore gives chain file i.
// It must differ from the file's DataWriteGuid before the restore (its
// data changes), and it is derived rather than random so that restoring
// the same recovery point twice writes the same bytes.
func chainDataWriteGUID(m *Manifest, d *DiskManifest, i int, f SourceFile) vdisk.GUID {
	h := sha256.New()
	fmt.Fprintf(h, "vmvault restore chain v1\x00%s\x00%s\x00%s\x00%d\x00%s\x00", m.VMGUID, m.ID, d.Name, i, f.Path)
	h.Write(f.DiskID[:])
	h.Write(f.DataWriteGUID[:])
	var g vdisk.GUID
	copy(g[:], h.Sum(nil))
	g[6] = g[6]&0x0f | 0x50 // RFC 4122 version 5 (name-based, SHA)
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g
}

// chainRestoreItems are the restore items of a chain: the base holding the
// flattened data (written by writeBase with the base's identity), then
// every descendant, parent before child, as an empty differencing file.
func chainRestoreItems(m *Manifest, d *DiskManifest, files []SourceFile, writeBase func(id vdisk.Identity) func(context.Context, string) error) []restoreItem {
	n := len(files)
	dw := make([]vdisk.GUID, n)
	for i, f := range files {
		dw[i] = chainDataWriteGUID(m, d, i, f)
	}
	b := files[n-1]
	id := vdisk.Identity{
		Format:             "vhdx",
		DiskID:             b.DiskID,
		DataWriteGUID:      dw[n-1],
		VirtualSize:        d.Identity.VirtualSize, // all of the flattened data
		LogicalSectorSize:  b.LogicalSectorSize,
		PhysicalSectorSize: b.PhysicalSectorSize,
		BlockSize:          b.BlockSize,
		ChainLength:        1,
	}
	items := []restoreItem{{final: b.Path, write: writeBase(id)}}
	for i := n - 2; i >= 0; i-- {
		f := files[i]
		cid := vdisk.Identity{
			Format:             "vhdx",
			DiskID:             f.DiskID,
			DataWriteGUID:      dw[i],
			VirtualSize:        f.VirtualSize,
			LogicalSectorSize:  f.LogicalSectorSize,
			PhysicalSectorSize: f.PhysicalSectorSize,
			BlockSize:          f.BlockSize,
		}
		if cid.VirtualSize == 0 {
			cid.VirtualSize = d.Identity.VirtualSize
		}
		parent := vhdx.DiffParent{
			Linkage:           dw[i+1],
			RelativePath:      f.ParentRelativePath,
			AbsoluteWin32Path: f.ParentAbsolutePath,
			VolumePath:        f.ParentVolumePath,
		}
		items = append(items, restoreItem{final: f.Path, write: func(ctx context.Context, tmp string) error {
			return vhdx.WriteDiffFile(ctx, tmp, cid, parent, vhdx.SynthOptions{})
		}})
	}
	return items
}

// checkDistinctTargets fails when two items of a restore would write the
// same file: two disks of the recovery point that are branches of one
// checkpoint tree share their base, which cannot hold both flattened
// disks.
func checkDistinctTargets(items []restoreItem) error {
	seen := map[string]bool{}
	var dup []string
	for _, it := range items {
		k := filepath.Clean(it.final)
		if seen[k] {
			dup = append(dup, it.final)
		}
		seen[k] = true
	}
	if len(dup) > 0 {
		return fmt.Errorf("engine: restore: %s would be written twice (two disks share checkpoint chain files); restore one of those disks (--disk), or --to DIR", strings.Join(dup, ", "))
	}
	return nil
}
