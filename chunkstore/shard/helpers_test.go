package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/local"
	"github.com/vmvault/vmvault/chunkstore/backend/mem"
)

const objName = "ab/ab12cd34.shard"

type kmCase struct{ k, m int }

var kmCases = []kmCase{{1, 0}, {4, 2}, {8, 2}, {10, 4}}

// pool is one test pack's targets plus a way to damage the stored bytes
// behind the backend's back (a real file edit for local).
type pool struct {
	t       testing.TB
	kind    string
	targets []Target
	dirs    []string // local only
}

func newPool(t testing.TB, kind string, n int) *pool {
	t.Helper()
	p := &pool{t: t, kind: kind}
	for i := range n {
		var be backend.Backend
		switch kind {
		case "mem":
			be = mem.New()
		case "local":
			dir := filepath.Join(t.TempDir(), fmt.Sprintf("pool%d", i))
			lb, err := local.Open(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			p.dirs = append(p.dirs, dir)
			be = lb
		default:
			t.Fatalf("bad kind %q", kind)
		}
		t.Cleanup(func() { be.Close() })
		p.targets = append(p.targets, Target{BE: be, Name: objName})
	}
	return p
}

// get returns the stored bytes of shard i (nil if missing).
func (p *pool) get(i int) []byte {
	p.t.Helper()
	ctx := context.Background()
	tg := p.targets[i]
	info, err := tg.BE.Stat(ctx, tg.Name)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		p.t.Fatal(err)
	}
	b := make([]byte, info.Size)
	if _, err := tg.BE.ReadAt(ctx, tg.Name, b, 0); err != nil {
		p.t.Fatal(err)
	}
	return b
}

func (p *pool) getAll() [][]byte {
	out := make([][]byte, len(p.targets))
	for i := range out {
		out[i] = p.get(i)
	}
	return out
}

// set replaces shard i's stored bytes. For local it edits the file in place
// (as disk rot would), not through Put.
func (p *pool) set(i int, b []byte) {
	p.t.Helper()
	if p.kind == "local" {
		if err := os.WriteFile(filepath.Join(p.dirs[i], filepath.FromSlash(objName)), b, 0o600); err != nil {
			p.t.Fatal(err)
		}
		return
	}
	tg := p.targets[i]
	if err := tg.BE.Put(context.Background(), tg.Name, bytes.NewReader(b), int64(len(b))); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pool) del(i int) {
	p.t.Helper()
	if err := p.targets[i].BE.Delete(context.Background(), p.targets[i].Name); err != nil {
		p.t.Fatal(err)
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func packIDOf(seed uint64) (id [32]byte) {
	for i := range id {
		id[i] = byte(seed>>(i%8*8)) ^ byte(i)
	}
	return id
}

func writePack(t testing.TB, p *pool, k, m, bs int, pack []byte) [32]byte {
	t.Helper()
	id := packIDOf(uint64(len(pack)) * 31)
	if err := Write(context.Background(), p.targets, id, Params{K: k, M: m, BlockSize: bs}, pack); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return id
}

// checkReads reads the whole pack, ranges around every shard and block
// boundary and nRandom random ranges, and compares with pack. It returns the
// union of shards reported bad.
func checkReads(t testing.TB, r *Reader, pack []byte, rng *rand.Rand, nRandom int) []int {
	t.Helper()
	ctx := context.Background()
	var allBad []int
	check := func(off int64, n int) {
		t.Helper()
		if off < 0 || off >= int64(len(pack)) || n <= 0 {
			return
		}
		buf := make([]byte, n)
		got, bad, err := r.ReadAt(ctx, buf, off)
		wantN := min(n, len(pack)-int(off))
		if got != wantN {
			t.Fatalf("ReadAt(off=%d, len=%d) n=%d want %d, err=%v", off, n, got, wantN, err)
		}
		if wantN < n && err == nil {
			t.Fatalf("ReadAt(off=%d, len=%d) past end: no io.EOF", off, n)
		}
		if wantN == n && err != nil {
			t.Fatalf("ReadAt(off=%d, len=%d): %v", off, n, err)
		}
		if !bytes.Equal(buf[:got], pack[off:off+int64(got)]) {
			t.Fatalf("ReadAt(off=%d, len=%d): data differs", off, n)
		}
		for _, b := range bad {
			if !slices.Contains(allBad, b) {
				allBad = append(allBad, b)
			}
		}
		if wantN < n {
			return
		}
		// View must give the same bytes (in place, or copied when the
		// range crosses a shard boundary) and find the same damage.
		v, release, vbad, err := r.View(ctx, off, n)
		if err != nil || !bytes.Equal(v, pack[off:off+int64(n)]) {
			t.Fatalf("View(off=%d, len=%d): equal %v, %v", off, n, bytes.Equal(v, pack[off:off+int64(n)]), err)
		}
		release()
		for _, b := range vbad {
			if !slices.Contains(allBad, b) {
				allBad = append(allBad, b)
			}
		}
	}
	check(0, len(pack))
	h := r.Header()
	for i := int64(0); i <= int64(h.K); i++ {
		for _, d := range []int64{-1, 0, 1} {
			check(i*h.ShardLen+d-5, 11)
		}
	}
	for b := int64(0); b < 4; b++ {
		check(b*int64(h.BlockSize)-3, 7)
		check(b*int64(h.BlockSize), h.BlockSize)
	}
	check(int64(len(pack))-1, 100) // crosses the end: io.EOF
	for range nRandom {
		off := rng.Int64N(int64(len(pack)))
		n := 1 + rng.IntN(min(len(pack), 3*h.BlockSize))
		check(off, n)
	}
	slices.Sort(allBad)
	return allBad
}

func mustReader(t testing.TB, targets []Target) *Reader {
	t.Helper()
	r, err := NewReader(context.Background(), targets)
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	return r
}

// checkRepair repairs, expects exactly wantRewritten, and compares every
// stored shard with the originals byte for byte; then Verify must be clean.
func checkRepair(t testing.TB, p *pool, orig [][]byte, wantRewritten []int) {
	t.Helper()
	ctx := context.Background()
	got, err := Repair(ctx, p.targets)
	if err != nil {
		t.Fatalf("Repair: %v", err)
	}
	if !slices.Equal(got, wantRewritten) {
		t.Fatalf("Repair rewrote %v, want %v", got, wantRewritten)
	}
	for i, o := range orig {
		if !bytes.Equal(p.get(i), o) {
			t.Fatalf("shard %d not byte-identical after Repair", i)
		}
	}
	rep, err := Verify(ctx, p.targets, true)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify after Repair: ok=%v bad=%v err=%v", rep.OK(), rep.Bad(), err)
	}
}
