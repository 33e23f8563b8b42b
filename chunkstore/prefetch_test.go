package chunkstore

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/local"
	"github.com/vmvault/vmvault/chunkstore/shard"
)

// prefetchRecorder is a backend that records Prefetch hints.
type prefetchRecorder struct {
	backend.Backend
	mu    sync.Mutex
	hints map[string][][2]int64 // object -> [off, end) ranges
}

func (p *prefetchRecorder) Prefetch(ctx context.Context, name string, off, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hints[name] = append(p.hints[name], [2]int64{off, off + n})
}

func (p *prefetchRecorder) covered(name string, off int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.hints[name] {
		if off >= r[0] && off < r[1] {
			return true
		}
	}
	return false
}

// TestPrefetchHintsDataShards: Prefetch hints, for every chunk asked for,
// the data-shard file ranges that hold its stored bytes; it never hints
// parity shards (reads do not touch them)
// and hints nothing for chunks it was not asked about in other packs.
func TestPrefetchHintsDataShards(t *testing.T) {
	const k, m = 3, 2
	dir := newRepo(t, k+m, InitOptions{DataShards: k, ParityShards: m, PackSize: 1 << 20})
	var recs []*prefetchRecorder
	var bes []backend.Backend
	for i := range k + m {
		l, err := local.Open(filepath.Join(dir, "pool"+string(rune('a'+i))), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		r := &prefetchRecorder{Backend: l, hints: map[string][][2]int64{}}
		recs = append(recs, r)
		bes = append(bes, r)
	}
	s := openT(t, dir, OpenOptions{Backends: bes})
	refs, _ := ingestAll(t, s, osLike(t, 6<<20))
	defer s.Close()
	// Every other chunk of the second half.
	var ids []ID
	for i := len(refs) / 2; i < len(refs); i += 2 {
		ids = append(ids, refs[i].ID)
	}
	s.Prefetch(context.Background(), ids)

	ctx := context.Background()
	hinted := 0
	for _, id := range ids {
		l, err := s.idx.lookup(id)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.packReader(ctx, l.Pack)
		if err != nil {
			t.Fatal(err)
		}
		h := r.Header()
		// Every 512th byte of the chunk's stored range, and its last.
		for off := int64(l.Offset); off < int64(l.Offset)+int64(l.Stored); off = min(off+512, int64(l.Offset)+int64(l.Stored)-1) {
			i := int(off / h.ShardLen)
			fileOff := shard.HeaderSize + h.TableLen() + off%h.ShardLen
			if !recs[i].covered(shardName(l.Pack, i), fileOff) {
				t.Fatalf("chunk %s: pack byte %d (shard %d, file offset %d) not hinted", id, off, i, fileOff)
			}
			hinted++
			if off == int64(l.Offset)+int64(l.Stored)-1 {
				break
			}
		}
	}
	if hinted == 0 {
		t.Fatal("no chunk bytes checked")
	}
	for i := k; i < k+m; i++ {
		if n := len(recs[i].hints); n != 0 {
			t.Errorf("parity pool %d got %d hints", i, n)
		}
	}
	// Packs holding none of the chunks get no hints.
	wanted := map[PackID]bool{}
	for _, id := range ids {
		l, _ := s.idx.lookup(id)
		wanted[l.Pack] = true
	}
	for _, ref := range refs[:len(refs)/4] {
		l, _ := s.idx.lookup(ref.ID)
		if !wanted[l.Pack] && len(recs[0].hints[shardName(l.Pack, 0)]) != 0 {
			t.Fatalf("pack %s holds none of the chunks but was hinted", l.Pack)
		}
	}
	// An unknown chunk is skipped, and reads still work.
	s.Prefetch(ctx, []ID{{1, 2, 3}})
	for _, ref := range refs {
		if _, err := s.Get(ctx, ref.ID); err != nil {
			t.Fatal(err)
		}
	}
}
