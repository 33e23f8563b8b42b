package engine

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmvault/vmvault/chunkstore"
)

// CheckOptions select the depth of a check.
type CheckOptions struct {
	// ReadData verifies every shard block and parity, not only structure.
	ReadData bool
	// Repair rewrites damaged shards and rebuilds the index first.
	Repair bool
	Logf   func(format string, args ...any)
}

// RPProblem is a recovery point that cannot be restored completely.
type RPProblem struct {
	VM            string `json:"vm"`
	VMGUID        string `json:"vm_guid"`
	ID            string `json:"id"`
	Error         string `json:"error"`
	MissingChunks int    `json:"missing_chunks"`
}

// CheckReport is the outcome of Check.
type CheckReport struct {
	Store          chunkstore.CheckReport   `json:"store"`
	Repair         *chunkstore.RepairReport `json:"repair,omitempty"`
	RecoveryPoints int                      `json:"recovery_points"`
	Chunks         int                      `json:"chunks_referenced"`
	Problems       []RPProblem              `json:"problems,omitempty"`
	// BytesRead is what the check read from the repository: every
	// manifest, and with ReadData every shard file (data and parity).
	BytesRead int64 `json:"bytes_read"`
}

// OK reports whether storage and every recovery point are intact.
func (c *CheckReport) OK() bool { return c.Store.OK() && len(c.Problems) == 0 }

// Check verifies the chunkstore (and repairs it on request), then loads
// every committed recovery point's manifest and checks that every chunk
// it references exists.
func (r *Repo) Check(ctx context.Context, o CheckOptions) (rep *CheckReport, err error) {
	job := r.startJob("check", "")
	defer func() {
		if rep != nil {
			job.BytesRead = rep.BytesRead
		}
		if err == nil && !rep.OK() {
			r.finishJob(job, fmt.Errorf("engine: check: problems found"))
			return
		}
		r.finishJob(job, err)
	}()
	// A restore killed earlier is finished first (restore_commit.go).
	r.recoverBeforeCheck(o.Logf)
	rep = &CheckReport{}
	if o.Repair {
		rr, err := r.store.Repair(ctx)
		if err != nil {
			return nil, fmt.Errorf("engine: check: repair: %w", err)
		}
		rep.Repair = &rr
	}
	rep.Store, err = r.store.Check(ctx, o.ReadData)
	if err != nil {
		return nil, fmt.Errorf("engine: check: %w", err)
	}
	if o.ReadData {
		rep.BytesRead += r.packBytes()
	}
	vms, err := r.cat.vms()
	if err != nil {
		return nil, fmt.Errorf("engine: check: %w", err)
	}
	present := map[chunkstore.ID]bool{}
	needLen := map[chunkstore.ID]int64{} // longest prefix any extent needs
	sized := map[chunkstore.ID]int64{}
	for _, vm := range vms {
		ps, err := listPointers(r.cat, vm.GUID)
		if err != nil {
			rep.Problems = append(rep.Problems, RPProblem{VM: vm.Name, VMGUID: vm.GUID, Error: err.Error()})
			continue
		}
		for _, p := range ps {
			rep.RecoveryPoints++
			prob := RPProblem{VM: vm.Name, VMGUID: vm.GUID, ID: p.ID}
			m, err := r.loadManifest(ctx, p)
			if err != nil {
				prob.Error = err.Error()
				rep.Problems = append(rep.Problems, prob)
				continue
			}
			rep.BytesRead += p.ManifestSize
			// present caches Has answers across recovery points (most
			// chunks are shared by consecutive ones).
			refs := map[chunkstore.ID]bool{}
			var ask []chunkstore.ID
			add := func(id ChunkID, need int64) {
				cid := chunkstore.ID(id)
				if need > needLen[cid] {
					needLen[cid] = need
				}
				if refs[cid] {
					return
				}
				refs[cid] = true
				if _, ok := present[cid]; !ok {
					ask = append(ask, cid)
				}
			}
			for _, d := range m.Disks {
				for _, s := range d.Segments {
					for _, e := range s.Extents {
						add(e.ID, e.ChunkOff+e.Len)
					}
				}
			}
			for _, c := range m.Config {
				for _, ref := range c.Chunks {
					add(ref.ID, ref.Len)
				}
			}
			has, err := r.store.Has(ctx, ask)
			if err != nil {
				return nil, fmt.Errorf("engine: check: %w", err)
			}
			for i, id := range ask {
				present[id] = has[i]
			}
			short := 0
			for id := range refs {
				if !present[id] {
					prob.MissingChunks++
					continue
				}
				// The chunk must hold every byte an extent takes from it:
				// an index that disagrees with the manifests is damage too.
				if _, done := sized[id]; !done {
					n, err := r.store.Size(ctx, id)
					if err != nil {
						return nil, fmt.Errorf("engine: check: %w", err)
					}
					sized[id] = n
				}
				if sized[id] < needLen[id] {
					short++
				}
			}
			var msgs []string
			if prob.MissingChunks > 0 {
				msgs = append(msgs, fmt.Sprintf("%d referenced chunks missing", prob.MissingChunks))
			}
			if short > 0 {
				msgs = append(msgs, fmt.Sprintf("%d chunks shorter than the extents that use them", short))
			}
			if len(msgs) > 0 {
				prob.Error = strings.Join(msgs, "; ")
				rep.Problems = append(rep.Problems, prob)
			}
			if o.Logf != nil {
				o.Logf("%s %s: %d disks, %d chunks referenced", vm.Name, p.ID, len(m.Disks), len(refs))
			}
		}
	}
	rep.Chunks = len(present)
	return rep, nil
}
