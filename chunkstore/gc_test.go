package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
)

// TestGC: packs with no live chunk are deleted, sparse packs repacked,
// live chunks read back, dead ones are gone, Check stays clean; and a
// writer that dedups against dead chunks while GC runs never loses them.
func TestGC(t *testing.T) {
	dir := newRepo(t, 2, InitOptions{DataShards: 2, ParityShards: 1, PackSize: 1 << 20, Password: []byte("pw"),
		ChunkMin: 64 << 10, ChunkAvg: 128 << 10, ChunkMax: 512 << 10})
	s := openT(t, dir, OpenOptions{Password: []byte("pw")})
	defer s.Close()
	ctx := context.Background()
	a, b, c := randBytes(1, 6<<20), randBytes(2, 6<<20), osLike(t, 6<<20)
	refsA, _ := ingestAll(t, s, a)
	refsB, _ := ingestAll(t, s, b)
	// C interleaved with half of B's chunks dead later: make mixed packs.
	refsC, _ := ingestAll(t, s, c)
	liveSet := make(map[ID]bool)
	for _, r := range refsA {
		liveSet[r.ID] = true
	}
	for i, r := range refsC {
		if i%4 == 0 { // 1/4 of C live: C's packs become sparse
			liveSet[r.ID] = true
		}
	}
	before := shardBytes(t, dir)
	rep, err := s.GC(ctx, func(id ID) bool { return liveSet[id] }, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	after := shardBytes(t, dir)
	t.Logf("%+v; shard bytes %d -> %d", rep, before, after)
	if rep.DeletedPacks == 0 || rep.RepackedPacks == 0 || rep.MovedChunks == 0 || after >= before {
		t.Fatalf("gc did too little: %+v", rep)
	}
	verifyRefs(t, s, a, refsA)
	for _, r := range refsC {
		if got, err := s.Get(ctx, r.ID); liveSet[r.ID] && (err != nil || !bytes.Equal(got, c[r.Offset:r.Offset+int64(r.Length)])) {
			t.Fatalf("live chunk %s: %v", r.ID, err)
		}
	}
	// Postcondition: every remaining pack is at least half live (by stored
	// bytes); dead chunks survive only there, all others are gone.
	type acc struct{ live, total int64 }
	byPack := make(map[PackID]*acc)
	s.idx.scan(idxChunk, func(k [32]byte, v []byte) error {
		l, _ := parseLocation(v)
		if byPack[l.Pack] == nil {
			byPack[l.Pack] = &acc{}
		}
		byPack[l.Pack].total += int64(l.Stored)
		if liveSet[ID(k)] {
			byPack[l.Pack].live += int64(l.Stored)
		}
		return nil
	})
	for p, a := range byPack {
		if a.live*2 < a.total {
			t.Fatalf("pack %s kept with %d of %d bytes live", p, a.live, a.total)
		}
	}
	gone := 0
	for _, r := range refsB {
		if _, err := s.Get(ctx, r.ID); errors.Is(err, ErrNotFound) {
			gone++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if gone < len(refsB)/2 {
		t.Fatalf("only %d of %d dead chunks of B gone", gone, len(refsB))
	}
	if cr, err := s.Check(ctx, true); err != nil || !cr.OK() {
		t.Fatalf("check: %v %s", err, cr)
	}

	// Concurrent writer: B is stored again; while GC (which thinks only A
	// is live) runs, B is ingested a third time (pure dedup hits). After
	// both, every chunk of B must be readable.
	for round := range 3 {
		ingestAll(t, s, b)
		var wg sync.WaitGroup
		var refs []Ref
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			_, err = s.Ingest(ctx, bytes.NewReader(b), func(r Ref) { refs = append(refs, r) })
			if err != nil {
				t.Error(err)
			}
		}()
		rep, err := s.GC(ctx, func(id ID) bool { return liveSet[id] }, GCOptions{})
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %+v", round, rep)
		verifyRefs(t, s, b, refs)
		if cr, err := s.Check(ctx, false); err != nil || !cr.OK() {
			t.Fatalf("check: %v %s", err, cr)
		}
	}
}
