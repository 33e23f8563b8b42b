package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/shard"
)

// PackProblem describes one pack Check found wanting.
type PackProblem struct {
	Pack      PackID
	BadShards []int  // missing or damaged shards (repairable when not Lost)
	Lost      bool   // more than M shards bad: data lost
	Err       string // first problem, human readable
}

// CheckReport is the result of Check.
type CheckReport struct {
	Packs       int // packs found in the pools
	Chunks      int // index entries
	DataChecked bool
	// Damaged packs still readable through parity; Repair rewrites them.
	Damaged []PackProblem
	// Lost packs: fewer than K good shards, or the trailer is unreadable.
	Lost []PackProblem
	// LostChunks are the IDs of indexed chunks in lost or missing packs.
	LostChunks []ID
	// MissingPacks are referenced by the index but have no shard at all.
	MissingPacks []PackID
	// Unindexed counts chunks listed by a readable pack but absent from
	// the index (Repair/Rebuild adds them).
	Unindexed int
	// Mismatched counts index entries that disagree with their pack's
	// trailer, or point to a pack that does not list them.
	Mismatched int
	// Pending counts packs marked pending (a write in progress or an
	// unrecovered crash).
	Pending int
}

// OK reports whether the repository is intact and the index agrees with
// the packs.
func (r CheckReport) OK() bool {
	return len(r.Damaged) == 0 && len(r.Lost) == 0 && len(r.LostChunks) == 0 &&
		len(r.MissingPacks) == 0 && r.Unindexed == 0 && r.Mismatched == 0 && r.Pending == 0
}

func (r CheckReport) String() string {
	return fmt.Sprintf("packs %d, chunks %d, damaged %d, lost %d (chunks %d), missing %d, unindexed %d, mismatched %d, pending %d",
		r.Packs, r.Chunks, len(r.Damaged), len(r.Lost), len(r.LostChunks), len(r.MissingPacks), r.Unindexed, r.Mismatched, r.Pending)
}

// listPacks returns the packs present in the pools and which shard indexes
// exist for each.
func (s *Store) listPacks(ctx context.Context) (map[PackID][]int, error) {
	out := make(map[PackID][]int)
	for pi, be := range s.pools {
		err := be.List(ctx, "packs/", func(oi backend.ObjectInfo) error {
			id, i, ok := parseShardName(oi.Name)
			if !ok || i%len(s.pools) != pi {
				return nil // foreign file or a shard in the wrong pool
			}
			out[id] = append(out[id], i)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("chunkstore: list pool %d: %w", pi, err)
		}
	}
	return out, nil
}

// Rebuild recreates the index from the packs' trailers alone. It should run
// while nothing else uses the Store. It returns the packs it could not read.
func (s *Store) Rebuild(ctx context.Context) ([]PackProblem, error) {
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	return s.rebuild(ctx)
}

func (s *Store) rebuild(ctx context.Context) ([]PackProblem, error) {
	if err := s.idx.setValid(s.cfg.ID, false); err != nil {
		return nil, err
	}
	if err := s.idx.dropAll(); err != nil {
		return nil, err
	}
	s.rmu.Lock()
	s.tables = newLRU[ID, *frameTable](16384)
	s.rmu.Unlock()
	packs, err := s.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	var bad []PackProblem
	n := 0
	for id := range packs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.dropReader(id)
		es, err := s.readTrailer(ctx, id)
		if err != nil {
			bad = append(bad, PackProblem{Pack: id, Lost: true, Err: err.Error()})
			continue
		}
		if err := s.idx.commitPack(id, es); err != nil {
			return nil, err
		}
		n += len(es)
	}
	if err := s.idx.setValid(s.cfg.ID, true); err != nil {
		return nil, err
	}
	s.opts.Logf("chunkstore: index rebuilt: %d packs, %d chunks, %d unreadable packs", len(packs)-len(bad), n, len(bad))
	return bad, nil
}

// Check verifies every pack's shards (presence, header, checksum table and,
// with readData, every block checksum and parity) through shard.Verify,
// every pack trailer, and the agreement of index and packs: every index
// entry's pack exists and lists the chunk at that place, and every pack's
// chunks are in the index. It reports; it changes nothing.
func (s *Store) Check(ctx context.Context, readData bool) (CheckReport, error) {
	var rep CheckReport
	rep.DataChecked = readData
	if err := s.Flush(ctx); err != nil {
		return rep, err
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	packs, err := s.listPacks(ctx)
	if err != nil {
		return rep, err
	}
	// Packs GC is deleting right now are not damage.
	if err := s.idx.scan(idxDoomed, func(k [32]byte, _ []byte) error {
		delete(packs, PackID(k))
		return nil
	}); err != nil {
		return rep, err
	}
	rep.Packs = len(packs)
	// Index entries grouped by pack.
	byPack := make(map[PackID]map[ID]location)
	if err := s.idx.scan(idxChunk, func(k [32]byte, v []byte) error {
		l, err := parseLocation(v)
		if err != nil {
			rep.Mismatched++
			return nil
		}
		rep.Chunks++
		m := byPack[l.Pack]
		if m == nil {
			m = make(map[ID]location)
			byPack[l.Pack] = m
		}
		m[ID(k)] = l
		return nil
	}); err != nil {
		return rep, err
	}
	if err := s.idx.scan(idxPending, func([32]byte, []byte) error { rep.Pending++; return nil }); err != nil {
		return rep, err
	}
	lose := func(id PackID) {
		for c := range byPack[id] {
			rep.LostChunks = append(rep.LostChunks, c)
		}
	}
	ids := make([]PackID, 0, len(packs))
	for id := range packs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		vr, err := shard.Verify(ctx, s.targets(id), readData)
		if err != nil || len(vr.LostStripes) > 0 {
			p := PackProblem{Pack: id, BadShards: vr.Bad(), Lost: true}
			if err != nil {
				p.Err = err.Error()
			} else {
				p.Err = fmt.Sprintf("%d stripes lost", len(vr.LostStripes))
			}
			rep.Lost = append(rep.Lost, p)
			lose(id)
			continue
		}
		if !vr.OK() {
			p := PackProblem{Pack: id, BadShards: vr.Bad()}
			for _, st := range vr.Shards {
				if !st.OK() {
					if st.Err != nil {
						p.Err = fmt.Sprintf("shard %d: %v", st.Index, st.Err)
					} else {
						p.Err = fmt.Sprintf("shard %d: %d bad blocks: %v", st.Index, st.BadBlockCount, st.FirstBlockErr)
					}
					break
				}
			}
			if len(vr.InconsistentStripes) > 0 {
				p.Err = fmt.Sprintf("parity inconsistent in %d stripes", len(vr.InconsistentStripes))
			}
			rep.Damaged = append(rep.Damaged, p)
		}
		s.dropReader(id) // a fresh reader: the cached one may predate damage
		es, err := s.readTrailer(ctx, id)
		if err != nil {
			rep.Lost = append(rep.Lost, PackProblem{Pack: id, Lost: true, Err: err.Error()})
			lose(id)
			continue
		}
		inPack := make(map[ID]packEntry, len(es))
		for _, e := range es {
			inPack[e.ID] = e
			if _, ok := byPack[id][e.ID]; ok {
				continue
			}
			if _, err := s.idx.lookup(e.ID); errors.Is(err, ErrNotFound) {
				rep.Unindexed++
			}
		}
		for c, l := range byPack[id] {
			e, ok := inPack[c]
			if !ok || e.Offset != l.Offset || e.Stored != l.Stored || e.Raw != l.Raw {
				rep.Mismatched++
			}
		}
	}
	for id := range byPack {
		if _, ok := packs[id]; !ok {
			rep.MissingPacks = append(rep.MissingPacks, id)
			lose(id)
		}
	}
	slices.SortFunc(rep.LostChunks, func(a, b ID) int { return compareID(a, b) })
	return rep, nil
}

func compareID(a, b ID) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

// RepairReport is the result of Repair.
type RepairReport struct {
	Repaired   map[PackID][]int // pack -> shard indexes rewritten
	LostPacks  []PackID
	LostChunks []ID // chunks that could not be recovered
}

// Repair rewrites missing or corrupt shards of every damaged pack
// (shard.Repair), then rebuilds the index from the packs. Chunks in packs
// that lost more than M shards are reported by ID (and dropped from the
// index, so the next backup stores them again if it still has them).
func (s *Store) Repair(ctx context.Context) (RepairReport, error) {
	rr := RepairReport{Repaired: make(map[PackID][]int)}
	rep, err := s.Check(ctx, true)
	if err != nil {
		return rr, err
	}
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	for _, p := range rep.Damaged {
		rew, err := shard.Repair(ctx, s.targets(p.Pack))
		s.dropReader(p.Pack)
		if err != nil {
			if errors.Is(err, shard.ErrUnrecoverable) {
				rr.LostPacks = append(rr.LostPacks, p.Pack)
				continue
			}
			return rr, s.wrapShardErr(p.Pack, err)
		}
		rr.Repaired[p.Pack] = rew
		s.opts.Logf("chunkstore: repaired pack %s: rewrote shards %v", p.Pack, rew)
	}
	for _, p := range rep.Lost {
		rr.LostPacks = append(rr.LostPacks, p.Pack)
	}
	rr.LostPacks = append(rr.LostPacks, rep.MissingPacks...)
	rr.LostChunks = rep.LostChunks
	if _, err := s.rebuild(ctx); err != nil {
		return rr, err
	}
	return rr, nil
}
