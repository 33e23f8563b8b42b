package engine

import (
	"context"
	"fmt"

	"github.com/vmvault/vmvault/chunkstore"
)

// PruneOptions tune Prune.
type PruneOptions struct {
	DryRun bool
	// RepackThreshold is passed to chunkstore GC (0 = its default).
	RepackThreshold float64
}

// PruneReport is the result of Prune.
type PruneReport struct {
	RecoveryPoints int                 `json:"recovery_points"`
	LiveChunks     int                 `json:"live_chunks"`
	GC             chunkstore.GCReport `json:"gc"`
}

// Prune deletes the data no committed recovery point references (after
// forget). The live set is every chunk of every manifest and the manifests
// themselves; if any manifest cannot be read, Prune stops without deleting
// anything, since a chunk it cannot see might be live.
//
// Safety against backups: the repository lock makes this process the only
// writer, and Prune must not run while this Repo runs a Backup (the CLI
// runs one command per process). A recovery point committed by another
// process cannot appear meanwhile; a concurrent forget only shrinks the set
// of points, which keeps more than needed, never less.
//
// The live set is an in-memory map (about 40 bytes per distinct chunk:
// 4 GB for 100 TB of unique 1 MiB chunks); a sorted on-disk set would be
// the next step at that scale.
func (r *Repo) Prune(ctx context.Context, o PruneOptions) (rep *PruneReport, err error) {
	job := r.startJob("prune", "")
	job.DryRun = o.DryRun
	defer func() { r.finishJob(job, err) }()
	rep = &PruneReport{}
	live := map[chunkstore.ID]struct{}{}
	vms, err := r.cat.vms()
	if err != nil {
		return nil, fmt.Errorf("engine: prune: %w", err)
	}
	for _, vm := range vms {
		ps, err := listPointers(r.cat, vm.GUID)
		if err != nil {
			return nil, fmt.Errorf("engine: prune: %w", err)
		}
		for _, p := range ps {
			m, err := r.loadManifest(ctx, p)
			if err != nil {
				return nil, fmt.Errorf("engine: prune: nothing deleted: %w", err)
			}
			rep.RecoveryPoints++
			for _, c := range p.Manifest {
				live[chunkstore.ID(c.ID)] = struct{}{}
			}
			for _, d := range m.Disks {
				for _, s := range d.Segments {
					for _, e := range s.Extents {
						live[chunkstore.ID(e.ID)] = struct{}{}
					}
				}
			}
			for _, c := range m.Config {
				for _, ref := range c.Chunks {
					live[chunkstore.ID(ref.ID)] = struct{}{}
				}
			}
		}
	}
	rep.LiveChunks = len(live)
	gc, err := r.store.GC(ctx, func(id chunkstore.ID) bool { _, ok := live[id]; return ok },
		chunkstore.GCOptions{DryRun: o.DryRun, RepackThreshold: o.RepackThreshold})
	if err != nil {
		return nil, fmt.Errorf("engine: prune: %w", err)
	}
	rep.GC = gc
	return rep, nil
}
