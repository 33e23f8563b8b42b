package chunkstore

import (
	"bytes"
	"context"
	"sync"
	"testing"
)

// TestRecycledPackBuffersUnderReads: pack and parity buffers are reused
// once a pack is written. Readers of chunks that are pending (read from the
// pack buffer) or just written must never see bytes of a later pack: with
// small packs, many packs cycle through the pools while readers check
// every chunk they read against its source.
func TestRecycledPackBuffersUnderReads(t *testing.T) {
	dir := newRepo(t, 1, InitOptions{DataShards: 3, ParityShards: 2, PackSize: 256 << 10})
	s := openT(t, dir, OpenOptions{})
	defer s.Close()
	ctx := context.Background()
	const n = 300
	chunks := make([][]byte, n)
	for i := range chunks {
		chunks[i] = randBytes(uint64(1000+i), 20<<10+i*97)
	}
	ids := make([]ID, n)
	var mu sync.Mutex
	put := 0 // chunks[:put] are Put and may be read
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				select {
				case <-done:
					return
				default:
				}
				mu.Lock()
				m := put
				mu.Unlock()
				if m == 0 {
					continue
				}
				i := (k*7919 + r*104729) % m
				got, err := s.Get(ctx, ids[i])
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, chunks[i]) {
					errs <- errRecycled(i)
					return
				}
			}
		}()
	}
	for i, c := range chunks {
		id, isNew, err := s.Put(ctx, ID{}, c)
		if err != nil || !isNew {
			t.Fatalf("put %d: new %v, %v", i, isNew, err)
		}
		mu.Lock()
		ids[i] = id
		put = i + 1
		mu.Unlock()
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	close(done)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	for i, c := range chunks {
		if got, err := s.Get(ctx, ids[i]); err != nil || !bytes.Equal(got, c) {
			t.Fatalf("after flush, chunk %d: %v", i, err)
		}
	}
	if rep, err := s.Check(ctx, true); err != nil || !rep.OK() || rep.Packs < 10 {
		t.Fatalf("check: %+v, %v", rep, err)
	}
}

type errRecycled int

func (e errRecycled) Error() string {
	return "chunk read back with other bytes (a recycled buffer?)"
}
