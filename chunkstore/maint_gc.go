package chunkstore

import (
	"context"
	"fmt"
)

// Garbage collection and its safety against a concurrent writer.
//
// One process opens a repository at a time (lock file + Badger's lock), so
// the only concurrent writer GC can meet is an ingest in the same Store.
// The danger is a dedup hit: a writer finds chunk X in the index (so does
// not store it) while GC, whose live set predates the writer's manifest,
// deletes X's pack. The touched-set closes that race:
//
//   - While GC runs, every dedup hit (Ingest, Put, Has) records its ID in
//     s.touched, under gcMu held for reading.
//   - GC decides and drops each pack's index entries under gcMu held for
//     writing, skipping any pack with a touched chunk. So a hit either
//     happened before (touched, the pack is kept) or after the drop (the
//     index no longer has X: the writer stores a new copy).
//   - Packs committed after GC took its snapshot are never considered.
//
// What the touched-set cannot see is a dedup hit from before GC started by
// a backup whose manifest is not yet committed: live must count the chunks
// of running backups (the engine holds its backup set while it runs GC, or
// does not run GC during backups).
//
// Crash safety: a pack's index entries are dropped together with a durable
// "doomed" mark, then its shards are deleted, then the mark is cleared;
// Open finishes an interrupted deletion. Repacked chunks are written to new
// packs and committed (index now points there) before the old pack is
// dropped, so a crash leaves at worst a duplicate copy.

// GCOptions tune GC.
type GCOptions struct {
	// RepackThreshold: a pack whose live fraction (by stored bytes) is
	// below it has its live chunks copied to new packs and is deleted.
	// 0 means 0.5; a negative value disables repacking.
	RepackThreshold float64
	// DryRun reports what would be done without changing anything.
	DryRun bool
}

// GCReport is the result of GC.
type GCReport struct {
	Packs          int   // packs considered
	DeletedPacks   int   // packs without a live chunk, deleted
	RepackedPacks  int   // sparse packs whose live chunks moved
	MovedChunks    int   // live chunks copied by repacking
	DeletedChunks  int   // index entries removed
	FreedBytes     int64 // stored chunk bytes no longer kept (before erasure overhead)
	SkippedTouched int   // packs kept because a writer reused a chunk meanwhile
}

// GC deletes packs holding no live chunk and repacks sparse ones. live
// reports whether a chunk is still referenced (see the safety notes above).
func (s *Store) GC(ctx context.Context, live func(ID) bool, opts GCOptions) (GCReport, error) {
	var rep GCReport
	thr := opts.RepackThreshold
	if thr == 0 {
		thr = 0.5
	}
	if err := s.Flush(ctx); err != nil {
		return rep, err
	}
	s.tmu.Lock()
	if s.touched != nil {
		s.tmu.Unlock()
		return rep, fmt.Errorf("chunkstore: gc already running")
	}
	s.touched = make(map[ID]struct{})
	s.tmu.Unlock()
	defer func() {
		s.tmu.Lock()
		s.touched = nil
		s.tmu.Unlock()
	}()

	// Snapshot: committed packs and their chunks.
	type pinfo struct {
		ids               []ID
		locs              []location
		liveB, totalB     int64
		liveIdx, deadIdxs []int
	}
	packs := make(map[PackID]*pinfo)
	if err := s.idx.scan(idxPack, func(k [32]byte, _ []byte) error {
		packs[PackID(k)] = &pinfo{}
		return nil
	}); err != nil {
		return rep, err
	}
	if err := s.idx.scan(idxChunk, func(k [32]byte, v []byte) error {
		l, err := parseLocation(v)
		if err != nil {
			return nil
		}
		p := packs[l.Pack]
		if p == nil {
			return nil // committed after the snapshot
		}
		p.ids = append(p.ids, ID(k))
		p.locs = append(p.locs, l)
		p.totalB += int64(l.Stored)
		return nil
	}); err != nil {
		return rep, err
	}
	rep.Packs = len(packs)
	var victims []PackID
	var repack []PackID
	for id, p := range packs {
		for i, c := range p.ids {
			if live(c) {
				p.liveB += int64(p.locs[i].Stored)
			}
		}
		switch {
		case p.liveB == 0:
			victims = append(victims, id)
		case thr > 0 && float64(p.liveB) < thr*float64(p.totalB):
			repack = append(repack, id)
		}
	}
	if opts.DryRun {
		rep.DeletedPacks, rep.RepackedPacks = len(victims), len(repack)
		return rep, nil
	}

	// Repack: copy the live blobs as they are (a sealed frame is bound to
	// its chunk ID, not to its pack), then commit the new packs.
	for _, id := range repack {
		p := packs[id]
		for i, c := range p.ids {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			if !live(c) {
				continue
			}
			l := p.locs[i]
			blob := make([]byte, l.Stored)
			if err := s.readPack(ctx, id, blob, int64(l.Offset)); err != nil {
				return rep, fmt.Errorf("chunkstore: gc: repack chunk %s: %w", c, err)
			}
			if _, err := parseFrameTable(blob, int64(l.Stored)); err != nil {
				return rep, fmt.Errorf("chunkstore: gc: repack chunk %s: %w", c, err)
			}
			if _, err := s.addBlob(c, int(l.Raw), [][]byte{blob}, len(blob), true); err != nil {
				return rep, err
			}
			rep.MovedChunks++
		}
	}
	if err := s.Flush(ctx); err != nil {
		return rep, err
	}
	victims = append(victims, repack...)
	isRepack := make(map[PackID]bool, len(repack))
	for _, id := range repack {
		isRepack[id] = true
	}

	for _, id := range victims {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		p := packs[id]
		if freed, ok, err := s.dropIfUntouched(id, p.ids, p.locs, live); err != nil {
			return rep, err
		} else if !ok {
			rep.SkippedTouched++
			continue
		} else {
			rep.FreedBytes += freed
		}
		testHookGCDropped(id)
		if err := s.deletePackShards(ctx, id); err != nil {
			return rep, err
		}
		if err := s.idx.clearDoomed(id); err != nil {
			return rep, fmt.Errorf("chunkstore: index: %w", err)
		}
		if isRepack[id] {
			rep.RepackedPacks++
		} else {
			rep.DeletedPacks++
		}
		for _, c := range p.ids {
			if !live(c) {
				rep.DeletedChunks++
			}
		}
	}
	s.opts.Logf("chunkstore: gc: %d packs, deleted %d, repacked %d (%d chunks moved), %d chunks removed, %d packs kept for concurrent reuse",
		rep.Packs, rep.DeletedPacks, rep.RepackedPacks, rep.MovedChunks, rep.DeletedChunks, rep.SkippedTouched)
	return rep, nil
}

// dropIfUntouched removes a pack's chunks from the index (those still
// pointing to it) unless a writer reused one of its dead chunks since GC
// started. It holds gcMu exclusively, so no dedup lookup interleaves.
func (s *Store) dropIfUntouched(id PackID, ids []ID, locs []location, live func(ID) bool) (int64, bool, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.tmu.Lock()
	var freed int64
	for i, c := range ids {
		if _, ok := s.touched[c]; ok {
			// A live chunk of a repacked pack already points elsewhere
			// (repack committed it); only a still-pointing one matters.
			if l, err := s.idx.lookup(c); err == nil && l.Pack == id {
				s.tmu.Unlock()
				return 0, false, nil
			}
		}
		if !live(c) {
			freed += int64(locs[i].Stored)
		}
	}
	s.tmu.Unlock()
	if err := s.idx.dropPack(id, ids); err != nil {
		return 0, false, fmt.Errorf("chunkstore: index: %w", err)
	}
	if err := s.idx.db.Sync(); err != nil {
		return 0, false, fmt.Errorf("chunkstore: index sync: %w", err)
	}
	return freed, true, nil
}

// testHookGCDropped lets the crash test widen the window between dropping
// a pack from the index and deleting its shards.
var testHookGCDropped = func(PackID) {}

// touch records a dedup hit while a GC runs (see above). Callers hold gcMu
// for reading.
func (s *Store) touch(id ID) {
	s.tmu.Lock()
	if s.touched != nil {
		s.touched[id] = struct{}{}
	}
	s.tmu.Unlock()
}
