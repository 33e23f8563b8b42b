package chunkstore

import (
	"bytes"
	"context"
	"os"
	"sync"
	"testing"
)

func shardBytes(t testing.TB, dir string) int64 {
	var n int64
	for _, f := range listShardFiles(t, dir) {
		fi, err := os.Stat(f)
		if err == nil {
			n += fi.Size()
		}
	}
	return n
}

// TestDedup: the same ~200 MB ingested again stores nothing; one byte
// inserted at the front stores only a few new chunks; two concurrent
// streams of the same data store it once.
func TestDedup(t *testing.T) {
	size := 200 << 20
	if testing.Short() {
		size = 32 << 20
	}
	dir := newRepo(t, 2, InitOptions{DataShards: 4, ParityShards: 1})
	s := openT(t, dir, OpenOptions{})
	defer s.Close()
	data := osLike(t, size)
	_, st1 := ingestAll(t, s, data)
	disk1 := shardBytes(t, dir)
	t.Logf("first: %+v, %d bytes of shards", st1, disk1)
	if st1.NewChunks == 0 || st1.StoredBytes >= st1.NewBytes {
		t.Fatalf("first ingest stored nothing or did not compress: %+v", st1)
	}
	refs2, st2 := ingestAll(t, s, data)
	if st2.NewChunks != 0 || st2.StoredBytes != 0 || shardBytes(t, dir) != disk1 {
		t.Fatalf("second ingest stored %+v", st2)
	}
	shifted := append([]byte{0x42}, data...)
	refs3, st3 := ingestAll(t, s, shifted)
	t.Logf("shifted: %+v", st3)
	if st3.NewChunks > 2 || st3.NewChunks < 1 {
		t.Fatalf("1 byte inserted at the front stored %d new chunks", st3.NewChunks)
	}
	for i := range 3 {
		for _, c := range []struct {
			r Ref
			d []byte
		}{{refs2[i], data}, {refs3[i], shifted}} {
			got, err := s.Get(context.Background(), c.r.ID)
			if err != nil || !bytes.Equal(got, c.d[c.r.Offset:c.r.Offset+int64(c.r.Length)]) {
				t.Fatalf("chunk %s: %v", c.r.ID, err)
			}
		}
	}

	// Concurrent streams with the same new data: stored once.
	fresh := randBytes(9, 16<<20) // not seen before
	var wg sync.WaitGroup
	sts := make([]Stats, 3)
	for i := range sts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			sts[i], err = s.Ingest(context.Background(), bytes.NewReader(fresh), nil)
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var total Stats
	for _, st := range sts {
		total.add(st)
	}
	if total.NewChunks != sts[0].Chunks {
		t.Fatalf("3 concurrent ingests of %d chunks stored %d", sts[0].Chunks, total.NewChunks)
	}
}
