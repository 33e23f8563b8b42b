package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/fault"
	"github.com/vmvault/vmvault/chunkstore/backend/local"
)

func faultPools(t *testing.T, dir string, n int) ([]backend.Backend, []*fault.Backend) {
	var bes []backend.Backend
	var fbs []*fault.Backend
	for i := range n {
		l, err := local.Open(filepath.Join(dir, "pool"+string(rune('a'+i))), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		fb := fault.New(l)
		bes = append(bes, fb)
		fbs = append(fbs, fb)
	}
	return bes, fbs
}

// TestFailedPackWrite: a failing shard Put fails Flush (stickily), leaves
// none of that pack's chunks visible and no shard behind; the repository
// reopens clean and earlier data is intact.
func TestFailedPackWrite(t *testing.T) {
	dir := newRepo(t, 3, InitOptions{DataShards: 2, ParityShards: 1, PackSize: 1 << 20})
	bes, fbs := faultPools(t, dir, 3)
	s := openT(t, dir, OpenOptions{Backends: bes})
	ctx := context.Background()
	good := randBytes(1, 3<<20)
	refs, _ := ingestAll(t, s, good)
	fbs[1].Fail(fault.OpPut, func(fault.Call) error { return fault.ErrInjected })
	var bad []Ref
	s.Ingest(ctx, bytes.NewReader(randBytes(2, 3<<20)), func(r Ref) { bad = append(bad, r) })
	if err := s.Flush(ctx); !errors.Is(err, fault.ErrInjected) {
		t.Fatalf("flush: %v", err)
	}
	if err := s.Flush(ctx); err == nil {
		t.Fatal("write error not sticky")
	}
	fbs[1].Reset()
	s.Close()
	s = openT(t, dir, OpenOptions{Backends: bes})
	defer s.Close()
	ids := make([]ID, len(bad))
	for i, r := range bad {
		ids[i] = r.ID
	}
	has, _ := s.Has(ctx, ids)
	for i, h := range has {
		if h {
			t.Fatalf("chunk %s of the failed pack is visible", ids[i])
		}
	}
	if rep, err := s.Check(ctx, true); err != nil || !rep.OK() {
		t.Fatalf("check: %v %s", err, rep)
	}
	verifyRefs(t, s, good, refs)
}

// TestRangeReadsTouchLittle: a 4 KiB GetRange of a multi-MiB chunk reads
// the frame table and about one frame's shard blocks, not the chunk.
func TestRangeReadsTouchLittle(t *testing.T) {
	dir := newRepo(t, 3, InitOptions{DataShards: 2, ParityShards: 1, ChunkMin: 2 << 20, ChunkAvg: 4 << 20, ChunkMax: 8 << 20})
	bes, fbs := faultPools(t, dir, 3)
	s := openT(t, dir, OpenOptions{Backends: bes})
	defer s.Close()
	data := randBytes(3, 16<<20)
	refs, _ := ingestAll(t, s, data)
	ctx := context.Background()
	// Open the pack reader (headers, checksum tables) with another chunk.
	p := make([]byte, 4096)
	if _, err := s.GetRange(ctx, refs[0].ID, 0, p); err != nil {
		t.Fatal(err)
	}
	ref := refs[1]
	for _, fb := range fbs {
		fb.ResetCounts()
	}
	off := ref.Length/2 + 1000
	if _, err := s.GetRange(ctx, ref.ID, int64(off), p); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, data[ref.Offset+int64(off):ref.Offset+int64(off)+4096]) {
		t.Fatal("range differs")
	}
	var read int64
	for _, fb := range fbs {
		read += fb.Total().BytesRead
	}
	t.Logf("chunk of %d bytes: 4 KiB range read %d bytes from shards", ref.Length, read)
	// Table head + the frame: each may straddle a 64 KiB shard block
	// boundary (the blob starts anywhere in the pack), so at most 2 blocks
	// each; the chunk itself is ~70 blocks.
	if read > 4*64<<10 || int(read) >= ref.Length/4 {
		t.Fatalf("4 KiB range of a %d-byte chunk read %d shard bytes", ref.Length, read)
	}
}

// TestResumeWrites: after a failed pack write, ResumeWrites (once nothing
// is in flight) lets the same Store take writes again, as a mount serving
// backups needs: the lost chunks are stored anew and read back, and the
// repository checks clean after a reopen.
func TestResumeWrites(t *testing.T) {
	dir := newRepo(t, 3, InitOptions{DataShards: 2, ParityShards: 1, PackSize: 1 << 20})
	bes, fbs := faultPools(t, dir, 3)
	s := openT(t, dir, OpenOptions{Backends: bes})
	ctx := context.Background()
	if err := s.ResumeWrites(); err != nil {
		t.Fatalf("resume without a failure: %v", err)
	}
	fbs[0].Fail(fault.OpPut, func(fault.Call) error { return fault.ErrInjected })
	data := randBytes(4, 3<<20)
	s.Ingest(ctx, bytes.NewReader(data), nil)
	if err := s.Flush(ctx); !errors.Is(err, fault.ErrInjected) {
		t.Fatalf("flush: %v", err)
	}
	fbs[0].Reset()
	if err := s.ResumeWrites(); err != nil {
		t.Fatalf("resume: %v", err)
	}
	refs, st := ingestAll(t, s, data)
	if st.NewChunks != int64(len(refs)) {
		t.Fatalf("after resume: %d of %d chunks stored anew", st.NewChunks, len(refs))
	}
	verifyRefs(t, s, data, refs)
	s.Close()
	s = openT(t, dir, OpenOptions{Backends: bes})
	defer s.Close()
	verifyRefs(t, s, data, refs)
	if rep, err := s.Check(ctx, true); err != nil || !rep.OK() {
		t.Fatalf("check: %v %s", err, rep)
	}
}
