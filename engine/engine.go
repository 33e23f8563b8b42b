// Package engine turns disks and VM folders into recovery points and back:
// backup (full and incremental, segment by segment), restore, the catalog of
// VMs, recovery points and jobs, consistency checks, and the small read-only
// API the mount builds its tree on (ListVMs, ListRecoveryPoints,
// LoadManifest, OpenDisk, OpenConfigFile).
//
// Repository layout (the chunkstore owns everything but catalog/):
//
//	<repo>/config, index/, data/...     chunkstore
//	<repo>/catalog/vms/<vm-guid>.json   VM record: name, GUID, group
//	<repo>/catalog/rps/<vm-guid>/<rp-id>.json
//	                                    recovery point pointer: summary for
//	                                    listing + the chunk refs of the manifest
//	<repo>/catalog/jobs/<job-id>.json   job records (backup, restore, check,
//	                                    forget, prune)
//	<repo>/catalog/groups/<name>.json   protection group: retention range
//	                                    and schedule (groups.go); members
//	                                    are the VMs whose record names it
//
// A recovery point's manifest (manifest.go) is stored as chunks like any
// data; the pointer file, written last with temp+fsync+link, is what makes
// a recovery point exist. A crash before it leaves orphan chunks (garbage
// for a later prune), never a listed half recovery point.
//
// Backup (backup.go, segment.go): a disk's allocated ranges are cut into
// aligned 16 MiB segments of virtual offset, processed by two or more
// workers at once. Per segment: read, drop all-zero 64 KiB blocks, then
// walk the previous recovery point's chunks of that segment: each one
// whose bytes still hash (keyed BLAKE3) to its ID at the same place is
// kept without chunking or compression; from the first one that differs
// the data is chunked until a cut falls on an old chunk boundary again,
// and only that stretch goes to the chunkstore (the result equals a full
// re-chunk). A segment whose chunks all match is "reused".
//
// A disk whose identity (DataWriteGuid), size and file mtimes are
// unchanged is not read at all. --full skips all reuse.
//
// By default the clusters of the guest's page, hibernation and swap files
// on NTFS volumes (vhdxfs.PageFileRanges) are left out of the allocation
// map, so they restore as zeros; the manifest lists every file left out.
// KeepPagefile backs them up.
//
// Retention (forget.go) is engine/retention's policy per VM: explicit
// keep rules, or else the retention range of the VM's protection group.
package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/vmvault/vmvault/chunkstore"
)

// Sentinel errors. Every error of this package is wrapped with an
// "engine: " prefix; callers test with errors.Is.
var (
	ErrNoRepository = errors.New("no repository")
	ErrUnknownVM    = errors.New("unknown VM")
	ErrUnknownRP    = errors.New("unknown recovery point")
	ErrUnknownDisk  = errors.New("unknown disk")
	ErrInUse        = errors.New("file in use")
	ErrHookFailed   = errors.New("pre-hook failed")
	ErrCorrupt      = errors.New("corrupt catalog or manifest")
)

// InitOptions are the parameters of a new repository.
type InitOptions struct {
	Pools        []string
	DataShards   int
	ParityShards int // -1 means no parity
	Password     []byte
	// KDFTime/KDFMemoryKiB lower the password KDF cost (tests only).
	KDFTime      uint32
	KDFMemoryKiB uint32
	// Chunk sizes and pack size (0 = chunkstore defaults).
	ChunkMin, ChunkAvg, ChunkMax int
	PackSize                     int
	// Compression in chunkstore.ParseCompression syntax ("zstd",
	// "zstd:-3", "minlz", "s2", "none"); "" = the chunkstore default.
	Compression string
}

// Init creates a repository (chunkstore plus an empty catalog) in dir.
func Init(dir string, o InitOptions) error {
	if _, err := os.Stat(filepath.Join(dir, catalogDir)); err == nil {
		return fmt.Errorf("engine: init %s: repository already exists", dir)
	}
	cso := chunkstore.InitOptions{
		Pools:        o.Pools,
		DataShards:   o.DataShards,
		Password:     o.Password,
		KDFTime:      o.KDFTime,
		KDFMemoryKiB: o.KDFMemoryKiB,
		ChunkMin:     o.ChunkMin,
		ChunkAvg:     o.ChunkAvg,
		ChunkMax:     o.ChunkMax,
		PackSize:     o.PackSize,
	}
	if o.Compression != "" {
		m, l, err := chunkstore.ParseCompression(o.Compression)
		if err != nil {
			return fmt.Errorf("engine: init: %w", err)
		}
		cso.Compression, cso.ZstdLevel = m, l
	}
	if o.ParityShards < 0 {
		cso.NoParity = true
	} else {
		cso.ParityShards = o.ParityShards
	}
	if err := chunkstore.Init(dir, cso); err != nil {
		return fmt.Errorf("engine: init: %w", err)
	}
	// Open once so the index exists: the first backup then does not log
	// an "index missing, rebuilding" that would look like a problem.
	st, err := chunkstore.Open(dir, chunkstore.OpenOptions{Password: o.Password, Logf: func(string, ...any) {}})
	if err != nil {
		return fmt.Errorf("engine: init: %w", err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("engine: init: %w", err)
	}
	for _, d := range []string{catalogDir, vmsDir, rpsDir, jobsDir, groupsDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return fmt.Errorf("engine: init: %w", err)
		}
	}
	if err := syncDir(filepath.Join(dir, catalogDir)); err != nil {
		return fmt.Errorf("engine: init: %w", err)
	}
	return syncDirErr(dir)
}

// OpenOptions tune Open.
type OpenOptions struct {
	Password []byte
	// Workers for the chunkstore (hash/compress); 0 = GOMAXPROCS (twice
	// the CPUs in cmd/vmvault, see IOProcs: measured a little faster than
	// one per CPU, as a worker may wait to hand a sealed pack to a writer).
	Workers int
	// CacheBytes bounds the chunkstore's cache of decoded 64 KiB frames
	// (what random reads decode); 0 = the chunkstore default (64 MiB).
	CacheBytes int64
	// Logf receives chunkstore events (repairs, recovery). Default: discard.
	Logf func(format string, args ...any)
}

// Repo is an open repository. Its read methods are safe for concurrent
// use; one Backup/Restore/Check at a time per Repo is the intended use (the
// chunkstore lock already makes a repository single-process).
type Repo struct {
	*Catalog
	dir   string
	store *chunkstore.Store
	// logf is OpenOptions.Logf: repository events such as the recovery of
	// an interrupted restore (restore_commit.go) go there too.
	logf func(format string, args ...any)

	closeOnce sync.Once
}

// Open opens the repository in dir (chunkstore and catalog). A wrong or
// missing password fails here, before any work.
func Open(dir string, o OpenOptions) (*Repo, error) {
	if _, err := os.Stat(filepath.Join(dir, "config")); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("engine: %s: %w (run vmvault init)", dir, ErrNoRepository)
		}
		return nil, fmt.Errorf("engine: %w", err)
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	st, err := chunkstore.Open(dir, chunkstore.OpenOptions{Password: o.Password, Workers: o.Workers, CacheBytes: o.CacheBytes, Logf: logf})
	if err != nil {
		return nil, fmt.Errorf("engine: open %s: %w", dir, err)
	}
	// Older repositories or ones made by chunkstore alone get a catalog.
	for _, d := range []string{catalogDir, vmsDir, rpsDir, jobsDir, groupsDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			st.Close()
			return nil, fmt.Errorf("engine: %w", err)
		}
	}
	return &Repo{Catalog: &Catalog{cat: &catalog{dir: dir}}, dir: dir, store: st, logf: logf}, nil
}

// Dir is the repository directory.
func (r *Repo) Dir() string { return r.dir }

// Close flushes and releases the repository.
func (r *Repo) Close() error {
	var err error
	r.closeOnce.Do(func() {
		if cerr := r.store.Close(); cerr != nil {
			err = fmt.Errorf("engine: close: %w", cerr)
		}
	})
	return err
}

// chunkGetter is the part of the chunkstore the read path needs; tests and
// the mount can substitute a cache or a fake.
type chunkGetter interface {
	GetRange(ctx context.Context, id chunkstore.ID, off int64, p []byte) (int, error)
	Get(ctx context.Context, id chunkstore.ID) ([]byte, error)
}

var _ chunkGetter = (*chunkstore.Store)(nil)
