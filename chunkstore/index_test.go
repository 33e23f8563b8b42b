package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestIndexRebuild: the index is a cache. Deleted, corrupted or dropped, it
// is rebuilt from the packs alone and every chunk reads back.
func TestIndexRebuild(t *testing.T) {
	pw := []byte("pw")
	dir := newRepo(t, 3, InitOptions{DataShards: 2, ParityShards: 1, Password: pw, PackSize: 1 << 20,
		ChunkMin: 64 << 10, ChunkAvg: 128 << 10, ChunkMax: 512 << 10})
	s := openT(t, dir, OpenOptions{Password: pw})
	data := osLike(t, 8<<20)
	refs, _ := ingestAll(t, s, data)
	s.Close()
	idxDir := filepath.Join(dir, "index")

	t.Run("deleted", func(t *testing.T) {
		os.RemoveAll(idxDir)
		if _, err := Open(dir, OpenOptions{Password: pw, NoAutoRebuild: true, Logf: t.Logf}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("open without auto rebuild: %v", err)
		}
		s := openT(t, dir, OpenOptions{Password: pw})
		defer s.Close()
		verifyRefs(t, s, data, refs)
	})
	t.Run("corrupted", func(t *testing.T) {
		ents, _ := os.ReadDir(idxDir)
		n := 0
		for _, e := range ents {
			p := filepath.Join(idxDir, e.Name())
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
				b := bytes.Repeat([]byte{0xA5}, int(fi.Size()))
				os.WriteFile(p, b, 0o600)
				n++
			}
		}
		if n == 0 {
			t.Fatal("no index files to corrupt")
		}
		s := openT(t, dir, OpenOptions{Password: pw})
		defer s.Close()
		verifyRefs(t, s, data, refs)
		rep, err := s.Check(context.Background(), false)
		if err != nil || !rep.OK() {
			t.Fatalf("check: %v %s", err, rep)
		}
	})
	t.Run("explicit", func(t *testing.T) {
		s := openT(t, dir, OpenOptions{Password: pw})
		defer s.Close()
		// Drop a chunk from the index: Check notices, Rebuild restores.
		s.idx.db.DropPrefix(key(idxChunk, refs[0].ID))
		if rep, _ := s.Check(context.Background(), false); rep.OK() || rep.Unindexed != 1 {
			t.Fatalf("check after dropping an entry: %s", rep)
		}
		if bad, err := s.Rebuild(context.Background()); err != nil || len(bad) != 0 {
			t.Fatalf("rebuild: %v %v", bad, err)
		}
		verifyRefs(t, s, data, refs)
		if rep, err := s.Check(context.Background(), true); err != nil || !rep.OK() {
			t.Fatalf("check: %v %s", err, rep)
		}
	})
}
