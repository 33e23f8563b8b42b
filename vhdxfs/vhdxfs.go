// Package vhdxfs opens virtual disk files of any supported format (VHDX,
// AVHDX differencing chains, raw images) behind one vdisk.Disk interface and
// lists the guest volumes inside them. The format work lives in
// sub-packages: vdisk (shared types, raw), vhdx (VHDX read and synthesis),
// part (partition tables) and guest (NTFS/ext4/FAT).
package vhdxfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/part"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// Re-exported so callers need one import for the common words.
type (
	Disk     = vdisk.Disk
	Identity = vdisk.Identity
	Extent   = vdisk.Extent
	GUID     = vdisk.GUID
)

// ErrUnsupported is returned for files that are neither VHDX nor raw images
// (VHD, VMDK, qcow2...), so a backup of the wrong file fails with one clear
// line instead of storing it as a "raw disk".
var ErrUnsupported = errors.New("unsupported disk format")

// Open opens a disk file read-only: a VHDX or AVHDX (whose parent chain is
// resolved) when the file starts with the VHDX signature, otherwise a raw
// image. Known foreign formats are refused.
func Open(path string) (Disk, error) {
	format, err := Detect(path)
	if err != nil {
		return nil, err
	}
	switch format {
	case "vhdx":
		return vhdx.Open(path)
	case "raw":
		return vdisk.OpenRaw(path)
	}
	return nil, fmt.Errorf("vhdxfs: %s: %w (%s)", path, ErrUnsupported, format)
}

// Detect names the format of a disk file by its magic: "vhdx", "raw", or the
// name of a format we recognise but do not read ("vhd", "qcow2", "vmdk").
func Detect(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("vhdxfs: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("vhdxfs: %w", err)
	}
	if fi.IsDir() {
		return "", fmt.Errorf("vhdxfs: %s: is a directory", path)
	}
	head := make([]byte, 512)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("vhdxfs: %s: %w", path, err)
	}
	head = head[:n]
	ext := strings.ToLower(filepath.Ext(path))
	switch {
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return "vhdx", nil
	case ext == ".vhdx" || ext == ".avhdx":
		// A file named like a VHDX without the signature is damaged, not raw:
		// storing it as a raw disk would "succeed" with garbage.
		return "", fmt.Errorf("vhdxfs: %s: not a VHDX file (no \"vhdxfile\" signature): %w", path, vdisk.ErrCorrupt)
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		return "qcow2", nil
	case bytes.HasPrefix(head, []byte("KDMV")):
		return "vmdk", nil
	case bytes.HasPrefix(head, []byte("conectix")):
		return "vhd", nil
	}
	if fi.Size() == 0 {
		return "", fmt.Errorf("vhdxfs: %s: empty file", path)
	}
	return "raw", nil
}

// Volume is one guest volume of a disk: a partition (or the whole disk, Index
// 0) and the filesystem found in it, if we read that kind.
type Volume struct {
	Partition part.Partition
	// FSType is "ntfs", "ext4", "fat32"... or "" when the filesystem is
	// unknown (the mount then shows the raw volume image).
	FSType string
	disk   io.ReaderAt
}

// Name is the volume's directory name in the recovery tree: "<disk>-p<N>".
func (v Volume) Name(diskName string) string {
	return fmt.Sprintf("%s-p%d", diskName, v.Partition.Index)
}

// Section returns a reader over the volume's bytes.
func (v Volume) Section() *io.SectionReader { return v.Partition.Section(v.disk) }

// OpenFS opens the guest filesystem (guest.ErrUnknownFS when FSType is "").
func (v Volume) OpenFS() (guest.FS, error) {
	sec := v.Section()
	return guest.Open(sec, sec.Size())
}

// Volumes reads d's partition table and detects the filesystem of each
// partition. Extended-partition containers are skipped (their logical
// partitions are listed). Table warnings (e.g. backup GPT used) are returned
// alongside.
func Volumes(d Disk) ([]Volume, []string, error) {
	lss := int(d.Identity().LogicalSectorSize)
	if lss == 0 {
		lss = 512
	}
	tab, err := part.Read(d, d.Size(), lss)
	if err != nil {
		return nil, nil, fmt.Errorf("vhdxfs: %w", err)
	}
	var vols []Volume
	for _, p := range tab.Partitions {
		if p.IsContainer() || p.Size <= 0 {
			continue
		}
		sec := p.Section(d)
		kind, err := guest.Detect(sec, sec.Size())
		if err != nil && !errors.Is(err, guest.ErrUnknownFS) {
			// A read error while probing is not fatal for listing: the
			// volume is still shown raw, and the error surfaces on open.
			kind = ""
		}
		vols = append(vols, Volume{Partition: p, FSType: kind, disk: d})
	}
	return vols, tab.Warnings, nil
}
