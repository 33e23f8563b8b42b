package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/chunkstore/shard"
)

// erasureRepo builds a K=4, M=2 repository over 6 pools holding a few packs
// and returns it with the data, refs and a saved copy of every shard file.
func erasureRepo(t *testing.T, enc bool) (dir string, pw []byte, data []byte, refs []Ref, orig map[string][]byte) {
	t.Helper()
	o := InitOptions{DataShards: 4, ParityShards: 2, PackSize: 1 << 20, ChunkMin: 64 << 10, ChunkAvg: 256 << 10, ChunkMax: 1 << 20}
	if enc {
		pw = []byte("pw")
		o.Password = pw
	}
	dir = newRepo(t, 6, o)
	s := openT(t, dir, OpenOptions{Password: pw})
	data = append(osLike(t, 5<<20), randBytes(3, 2<<20)...)
	refs, _ = ingestAll(t, s, data)
	s.Close()
	orig = make(map[string][]byte)
	for _, f := range listShardFiles(t, dir) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		orig[f] = b
	}
	return
}

// packFiles groups shard files by pack: pack hex -> files ordered by index.
func packFiles(orig map[string][]byte) map[string][]string {
	out := make(map[string][]string)
	for f := range orig {
		base := f[strings.LastIndexByte(f, '/')+1:]
		h, idx, _ := strings.Cut(base, ".")
		files := out[h]
		for len(files) < 6 {
			files = append(files, "")
		}
		var i int
		fmt.Sscanf(idx, "%d", &i)
		files[i] = f
		out[h] = files
	}
	return out
}

// chunksOf returns the IDs the index places in pack h.
func chunksOf(t *testing.T, s *Store, h string) map[ID]bool {
	out := make(map[ID]bool)
	s.idx.scan(idxChunk, func(k [32]byte, v []byte) error {
		l, _ := parseLocation(v)
		if l.Pack.String() == h {
			out[ID(k)] = true
		}
		return nil
	})
	return out
}

// TestErasureThroughStore damages up to M shards of a pack in different
// ways; every chunk must read back exactly, OnRepair must fire when a read
// hit the damage, and Repair must restore byte-identical shard files. With
// M+1 shards gone the errors name the lost chunks.
func TestErasureThroughStore(t *testing.T) {
	type damage struct {
		name string
		do   func(r *rand.Rand, files []string) // files of the victim pack, by shard index
		read bool                               // reads hit it: expect OnRepair
	}
	flip := func(r *rand.Rand, f string, lo, hi int64) {
		b, _ := os.ReadFile(f)
		hi = min(hi, int64(len(b)))
		for range 3 {
			b[lo+r.Int64N(hi-lo)] ^= byte(1 + r.IntN(255))
		}
		os.WriteFile(f, b, 0o600)
	}
	data := func(r *rand.Rand, f string) { flip(r, f, shard.HeaderSize+4096, 1<<40) }
	damages := []damage{
		{"delete-2-data", func(r *rand.Rand, fs []string) { os.Remove(fs[0]); os.Remove(fs[2]) }, true},
		{"delete-data-and-parity", func(r *rand.Rand, fs []string) { os.Remove(fs[1]); os.Remove(fs[5]) }, true},
		{"flip-data-blocks", func(r *rand.Rand, fs []string) { data(r, fs[0]); data(r, fs[3]) }, true},
		{"flip-header", func(r *rand.Rand, fs []string) { flip(r, fs[1], 0, shard.HeaderSize) }, true},
		{"flip-checksum-table", func(r *rand.Rand, fs []string) { flip(r, fs[2], shard.HeaderSize, shard.HeaderSize+4096) }, true},
		{"flip-parity", func(r *rand.Rand, fs []string) { data(r, fs[4]); flip(r, fs[5], 0, shard.HeaderSize) }, false},
		{"truncate-data", func(r *rand.Rand, fs []string) { os.Truncate(fs[0], shard.HeaderSize+100) }, true},
	}
	for i, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			enc := i%2 == 1
			dir, pw, dt, refs, orig := erasureRepo(t, enc)
			r := rand.New(rand.NewPCG(uint64(i), 99))
			packs := packFiles(orig)
			if len(packs) < 3 {
				t.Fatalf("only %d packs", len(packs))
			}
			for _, files := range packs { // damage every pack the same way
				d.do(r, files)
			}
			events := make(chan RepairEvent, 100)
			s := openT(t, dir, OpenOptions{Password: pw, OnRepair: func(ev RepairEvent) { events <- ev }})
			verifyRefs(t, s, dt, refs)
			if d.read {
				select {
				case ev := <-events:
					if ev.Err != nil || len(ev.Rewritten) == 0 {
						t.Fatalf("repair event %+v", ev)
					}
				case <-time.After(20 * time.Second):
					t.Fatal("no OnRepair event")
				}
			}
			// Background repairs finish by Close; then Repair fixes the rest
			// (e.g. parity nobody read).
			s.Close()
			s = openT(t, dir, OpenOptions{Password: pw})
			defer s.Close()
			if _, err := s.Repair(context.Background()); err != nil {
				t.Fatal(err)
			}
			for f, b := range orig {
				got, err := os.ReadFile(f)
				if err != nil || !bytes.Equal(got, b) {
					t.Fatalf("%s not restored: %v", f, err)
				}
			}
			rep, err := s.Check(context.Background(), true)
			if err != nil || !rep.OK() {
				t.Fatalf("check after repair: %v %s", err, rep)
			}
			verifyRefs(t, s, dt, refs)
		})
	}
	t.Run("lose-M+1", func(t *testing.T) {
		dir, pw, dt, refs, orig := erasureRepo(t, true)
		packs := packFiles(orig)
		var victim string
		for h, files := range packs {
			victim = h
			os.Remove(files[0])
			os.Remove(files[3])
			os.Remove(files[5])
			break
		}
		s := openT(t, dir, OpenOptions{Password: pw})
		defer s.Close()
		lost := chunksOf(t, s, victim)
		if len(lost) == 0 {
			t.Fatal("victim pack has no chunks")
		}
		for _, ref := range refs {
			got, err := s.Get(context.Background(), ref.ID)
			if lost[ref.ID] {
				if !errors.Is(err, ErrUnrecoverable) || !strings.Contains(err.Error(), ref.ID.String()) {
					t.Fatalf("lost chunk %s: %v", ref.ID, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, dt[ref.Offset:ref.Offset+int64(ref.Length)]) {
				t.Fatalf("chunk %s: %v", ref.ID, err)
			}
		}
		rep, err := s.Check(context.Background(), false)
		if err != nil || rep.OK() || len(rep.LostChunks) != len(lost) {
			t.Fatalf("check: %v %s", err, rep)
		}
		rr, err := s.Repair(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(rr.LostChunks) != len(lost) {
			t.Fatalf("repair lost %d chunks, want %d", len(rr.LostChunks), len(lost))
		}
		for _, id := range rr.LostChunks {
			if !lost[id] {
				t.Fatalf("repair names %s, not in the lost pack", id)
			}
		}
		t.Logf("lost chunks named: %d", len(rr.LostChunks))
	})
}
