// Package mount builds the recovery tree (DESIGN.md "The recovery tree") over
// a read-only view of a repository, and serves it to two thin FUSE adapters
// (mount/gofuse on Linux, mount/cgofuse on Windows and macOS) and to the
// non-FUSE `vmvault files` commands through one OS-neutral API:
//
//	<root>/<vm-name>/latest                      symlink to the newest recovery point
//	<root>/<vm-name>/<rp-id>/vm.json             the manifest
//	<root>/<vm-name>/<rp-id>/config/...          VM configuration files
//	<root>/<vm-name>/<rp-id>/disks/<disk>.vhdx   synthesized dynamic VHDX
//	<root>/<vm-name>/<rp-id>/disks/<disk>.raw    flat image of the virtual disk
//	<root>/<vm-name>/<rp-id>/volumes/<disk>-p<N>/...  guest files, or volume.img
//
// The tree is built lazily: the root and VM directories ask the Source each
// time they are listed (so new recovery points appear in a running mount),
// and a recovery point is opened only when something inside it is first
// looked at. Everything below a recovery point is immutable.
//
// This package knows nothing of FUSE or errno; adapters translate the
// sentinel errors below (plus fs.ErrNotExist / fs.ErrInvalid) in one place.
package mount

import (
	"context"
	"errors"
	"time"

	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Source is the read-only repository view the tree is built on: the engine
// adapter (engine_source.go) in production, DirSource in tests. All methods
// must be safe for concurrent use.
type Source interface {
	// VMs lists the protected VMs. Called whenever the root is listed (at
	// most once per Options.Refresh), so it should be cheap.
	VMs(ctx context.Context) ([]VM, error)
	// RecoveryPoints lists a VM's recovery points, in any order.
	RecoveryPoints(ctx context.Context, vm VM) ([]RP, error)
	// Open opens one recovery point for reading. The tree calls it once per
	// recovery point, on first entry, and closes the Point on Tree.Close.
	Open(ctx context.Context, vm VM, rp RP) (Point, error)
}

// VM is one protected machine. Name is its directory name in the tree; ID
// is whatever the Source needs to find it again (the engine uses the GUID).
type VM struct {
	Name string
	ID   string
}

// RP is one recovery point. ID is its directory name
// (YYYY-MM-DDTHHMMSSZ, with a .2, .3 suffix when two share a second).
type RP struct {
	ID   string
	Time time.Time
}

// Point is an open recovery point. Everything it returns is immutable.
type Point interface {
	// ManifestJSON is the content of vm.json.
	ManifestJSON() []byte
	// Time is the creation time (mtime of the recovery point's entries).
	Time() time.Time
	// Disks lists the backed-up disks; names are unique.
	Disks() []DiskInfo
	// OpenDisk returns the guest-visible bytes of a disk. Its Identity is
	// what the synthesized .vhdx carries (DiskID, DataWriteGUID, sector and
	// block sizes) and Allocated tells which ranges can hold data. The tree
	// closes it on Tree.Close.
	OpenDisk(ctx context.Context, name string) (vdisk.Disk, error)
	// ConfigFiles lists the configuration files, Name slash-separated and
	// relative to the VM folder.
	ConfigFiles() []ConfigFile
	// OpenConfig opens one configuration file by its Name.
	OpenConfig(ctx context.Context, name string) (guest.File, error)
	Close() error
}

// DiskInfo names one disk of a recovery point.
type DiskInfo struct {
	// Name is the source file name without extension (<disk> in the tree).
	Name string
}

// ConfigFile describes one configuration file of a recovery point.
type ConfigFile struct {
	Name    string // slash-separated path relative to the VM folder
	Size    int64
	ModTime time.Time
}

// Sentinel errors of the tree. Adapters map them to errno; everything else
// that is not fs.ErrNotExist / fs.ErrInvalid becomes EIO.
var (
	ErrNotDir   = errors.New("mount: not a directory")
	ErrIsDir    = errors.New("mount: is a directory")
	ErrNotLink  = errors.New("mount: not a symlink")
	ErrClosed   = errors.New("mount: tree closed")
	ErrReadOnly = errors.New("mount: read-only file system")
)
