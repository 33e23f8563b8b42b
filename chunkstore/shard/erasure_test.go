package shard

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/fault"
	"github.com/vmvault/vmvault/chunkstore/backend/mem"
)

// combos returns every size-r subset of 0..n-1.
func combos(n, r int) [][]int {
	var out [][]int
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == r {
			out = append(out, slices.Clone(cur))
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
	return out
}

// randomCombos returns count random size-r subsets (sorted) of 0..n-1.
func randomCombos(rng *rand.Rand, n, r, count int) [][]int {
	var out [][]int
	for range count {
		c := rng.Perm(n)[:r]
		slices.Sort(c)
		out = append(out, c)
	}
	return out
}

// dataShardsWithBytes lists the data shards that hold pack bytes: a full
// read must need (and so report) exactly those when missing.
func dataShardsWithBytes(h Header) []int {
	var out []int
	for i := range h.K {
		if int64(i)*h.ShardLen < h.PackLen {
			out = append(out, i)
		}
	}
	return out
}

func intersect(a, b []int) []int {
	var out []int
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func isSubset(a, b []int) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// TestErasure deletes shard objects: every subset of up to M for 4+2,
// random M-subsets for the wider codes. Reads must stay exact and name the
// lost shards they needed; Repair must restore byte-identical objects.
// Deleting M+1 must give ErrUnrecoverable from NewReader, Verify and Repair.
func TestErasure(t *testing.T) {
	for _, km := range kmCases[1:] {
		for _, kind := range []string{"mem", "local"} {
			t.Run(fmt.Sprintf("%s/%d+%d", kind, km.k, km.m), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(km.k), 99))
				n := km.k + km.m
				pack := randBytes(rng, 37*4096*km.k+1234) // ~37 blocks per shard, odd tail
				p := newPool(t, kind, n)
				writePack(t, p, km.k, km.m, 4096, pack)
				orig := p.getAll()
				var sets [][]int
				if km.k == 4 {
					for r := 1; r <= km.m; r++ {
						sets = append(sets, combos(n, r)...)
					}
				} else {
					sets = randomCombos(rng, n, km.m, 6)
					sets = append(sets, []int{0}, []int{n - 1})
				}
				if kind == "local" && len(sets) > 6 {
					sets = sets[len(sets)-6:]
				}
				for _, lost := range sets {
					for _, i := range lost {
						p.del(i)
					}
					r := mustReader(t, p.targets)
					if got := r.Bad(); !slices.Equal(got, lost) {
						t.Fatalf("lost %v: Reader.Bad() = %v", lost, got)
					}
					bad := checkReads(t, r, pack, rng, 30)
					if !isSubset(bad, lost) || !isSubset(intersect(lost, dataShardsWithBytes(r.Header())), bad) {
						t.Fatalf("lost %v: reads reported bad %v", lost, bad)
					}
					rep, err := Verify(context.Background(), p.targets, false)
					if err != nil || !slices.Equal(rep.Bad(), lost) {
						t.Fatalf("lost %v: Verify bad %v, err %v", lost, rep.Bad(), err)
					}
					for _, i := range lost {
						if !rep.Shards[i].Missing {
							t.Fatalf("lost %v: shard %d not reported missing", lost, i)
						}
					}
					checkRepair(t, p, orig, lost)
				}

				// One more than parity can bear.
				lost := rng.Perm(n)[:km.m+1]
				for _, i := range lost {
					p.del(i)
				}
				ctx := context.Background()
				if _, err := NewReader(ctx, p.targets); !errors.Is(err, ErrUnrecoverable) {
					t.Fatalf("NewReader with %d lost: %v", km.m+1, err)
				}
				if _, err := Verify(ctx, p.targets, true); !errors.Is(err, ErrUnrecoverable) {
					t.Fatalf("Verify with %d lost: %v", km.m+1, err)
				}
				if _, err := Repair(ctx, p.targets); !errors.Is(err, ErrUnrecoverable) {
					t.Fatalf("Repair with %d lost: %v", km.m+1, err)
				} else if !strings.Contains(err.Error(), fmt.Sprintf("only %d of %d shards", n-km.m-1, n)) {
					t.Fatalf("Repair error does not say how many shards are bad: %v", err)
				}
			})
		}
	}
}

// region picks where a flip lands.
type region int

const (
	inHeader region = iota
	inTable
	inBlock
	nRegions
)

func (r region) String() string { return [...]string{"header", "table", "block"}[r] }

// flip XORs one random byte of the region with a random non-zero value and
// returns the offset.
func flip(rng *rand.Rand, obj []byte, h Header, reg region) int64 {
	var lo, hi int64
	switch reg {
	case inHeader:
		lo, hi = 0, HeaderSize
	case inTable:
		lo, hi = HeaderSize, h.DataOffset()
	case inBlock:
		lo, hi = h.DataOffset(), h.ObjectSize()
	}
	off := lo + rng.Int64N(hi-lo)
	obj[off] ^= byte(1 + rng.IntN(255))
	return off
}

// TestByteFlips is in the spirit of kopia's repo/ecc tests: flip random bytes
// in headers, checksum tables, data blocks and parity blocks of up to M
// random shards. Reads must be exact, Verify(readData) must name exactly the
// damaged shards, Repair must fix them byte-identically and leave Verify
// clean. With M=0 the damage must be detected, never returned as data.
func TestByteFlips(t *testing.T) {
	for _, km := range kmCases {
		for _, kind := range []string{"mem", "local"} {
			t.Run(fmt.Sprintf("%s/%d+%d", kind, km.k, km.m), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(km.k*100+km.m), 7))
				n := km.k + km.m
				pack := randBytes(rng, 20*4096*km.k-777)
				p := newPool(t, kind, n)
				writePack(t, p, km.k, km.m, 4096, pack)
				orig := p.getAll()
				h := mustReader(t, p.targets).Header()
				iters := 40
				if kind == "local" {
					iters = 10
				}
				for it := range iters {
					nd := 1
					if km.m > 0 {
						nd = 1 + rng.IntN(km.m)
					}
					damaged := rng.Perm(n)[:nd]
					slices.Sort(damaged)
					var what []string
					for _, i := range damaged {
						obj := p.get(i)
						// One to three flips per shard, possibly in different regions.
						for range 1 + rng.IntN(3) {
							reg := region(rng.IntN(int(nRegions)))
							off := flip(rng, obj, h, reg)
							what = append(what, fmt.Sprintf("shard %d %v @%d", i, reg, off))
						}
						p.set(i, obj)
					}
					ctx := context.Background()
					if km.m == 0 {
						checkUndetectedNever(t, p, pack)
						if _, err := Repair(ctx, p.targets); !errors.Is(err, ErrUnrecoverable) {
							t.Fatalf("M=0 Repair after %v: %v", what, err)
						}
						p.set(0, orig[0])
						continue
					}
					r := mustReader(t, p.targets)
					bad := checkReads(t, r, pack, rng, 20)
					if !isSubset(bad, damaged) {
						t.Fatalf("iter %d, %v: reads reported %v", it, what, bad)
					}
					rep, err := Verify(ctx, p.targets, true)
					if err != nil || !slices.Equal(rep.Bad(), damaged) {
						t.Fatalf("iter %d, %v: Verify bad %v (want %v), err %v", it, what, rep.Bad(), damaged, err)
					}
					checkRepair(t, p, orig, damaged)
				}
			})
		}
	}
}

// checkUndetectedNever: with no parity, every read either returns the exact
// bytes or fails with ErrUnrecoverable/ErrCorrupt; Verify must flag shard 0.
func checkUndetectedNever(t *testing.T, p *pool, pack []byte) {
	t.Helper()
	ctx := context.Background()
	rep, err := Verify(ctx, p.targets, true)
	if err == nil || rep.OK() {
		t.Fatalf("M=0: Verify missed the damage: ok=%v err=%v", rep.OK(), err)
	}
	r, err := NewReader(ctx, p.targets)
	if err != nil {
		if !errors.Is(err, ErrUnrecoverable) {
			t.Fatalf("M=0 NewReader: %v", err)
		}
		return
	}
	buf := make([]byte, len(pack))
	for off := 0; off < len(pack); off += 4096 {
		b := buf[off:min(off+4096, len(pack))]
		n, _, err := r.ReadAt(ctx, b, int64(off))
		if err != nil {
			if !errors.Is(err, ErrUnrecoverable) || n != 0 {
				t.Fatalf("M=0 read at %d: n=%d %v", off, n, err)
			}
			continue
		}
		if string(b) != string(pack[off:off+len(b)]) {
			t.Fatalf("M=0: damaged bytes at %d returned as data", off)
		}
	}
}

// TestStripeLevelRecovery damages M+1 shards, but in different stripes:
// every stripe still has K good blocks, so reads and Repair must succeed.
// The same damage in one stripe must be ErrUnrecoverable for that range only.
func TestStripeLevelRecovery(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	pack := randBytes(rng, 4*10*4096)
	p := newPool(t, "mem", 6)
	writePack(t, p, 4, 2, 4096, pack)
	orig := p.getAll()
	h := mustReader(t, p.targets).Header()
	damage := func(shard, block int) {
		obj := p.get(shard)
		obj[h.DataOffset()+int64(block)*4096+100] ^= 0xff
		p.set(shard, obj)
	}
	damage(0, 1)
	damage(1, 2)
	damage(4, 3)
	r := mustReader(t, p.targets)
	if bad := checkReads(t, r, pack, rng, 50); !slices.Equal(bad, []int{0, 1, 4}) && !slices.Equal(bad, []int{0, 1}) {
		t.Fatalf("reads reported %v", bad)
	}
	checkRepair(t, p, orig, []int{0, 1, 4})

	damage(0, 5)
	damage(1, 5)
	damage(5, 5)
	r = mustReader(t, p.targets)
	ctx := context.Background()
	buf := make([]byte, 10)
	if _, _, err := r.ReadAt(ctx, buf, 5*4096); !errors.Is(err, ErrUnrecoverable) {
		t.Fatalf("read of a stripe with 3 bad blocks: %v", err)
	}
	if _, _, err := r.ReadAt(ctx, buf, 6*4096); err != nil {
		t.Fatalf("read of a healthy stripe: %v", err)
	}
	rep, err := Verify(ctx, p.targets, true)
	if !errors.Is(err, ErrUnrecoverable) || !slices.Equal(rep.LostStripes, []int{5}) {
		t.Fatalf("Verify: lost %v, %v", rep.LostStripes, err)
	}
	if _, err := Repair(ctx, p.targets); !errors.Is(err, ErrUnrecoverable) {
		t.Fatalf("Repair: %v", err)
	}
}

// TestForeignShard puts a valid shard of another pack in shard 1's place:
// the consensus header must reject it like a damaged one.
func TestForeignShard(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	pack := randBytes(rng, 100_000)
	p := newPool(t, "mem", 6)
	writePack(t, p, 4, 2, 4096, pack)
	orig := p.getAll()
	other := newPool(t, "mem", 6)
	writePack(t, other, 4, 2, 4096, randBytes(rng, 100_001))
	p.set(1, other.get(1))
	r := mustReader(t, p.targets)
	if !slices.Equal(r.Bad(), []int{1}) {
		t.Fatalf("Bad() = %v", r.Bad())
	}
	checkReads(t, r, pack, rng, 20)
	checkRepair(t, p, orig, []int{1})

	// Shards swapped between positions are wrong too.
	s2, s3 := p.get(2), p.get(3)
	p.set(2, s3)
	p.set(3, s2)
	r = mustReader(t, p.targets)
	checkReads(t, r, pack, rng, 20)
	checkRepair(t, p, orig, []int{2, 3})
}

// faultPool builds K+M fault-wrapped memory backends.
func faultPool(t *testing.T, n int) (*pool, []*fault.Backend) {
	p := &pool{t: t, kind: "mem"}
	var fbs []*fault.Backend
	for range n {
		fb := fault.New(mem.New())
		fbs = append(fbs, fb)
		p.targets = append(p.targets, Target{BE: fb, Name: objName})
	}
	return p, fbs
}

// TestReadTouchesOnlyNeededBlocks counts backend reads: opening reads one
// header page and table page per shard; a small read touches one block of
// one data shard; a degraded read touches one block of K other shards.
func TestReadTouchesOnlyNeededBlocks(t *testing.T) {
	const bs = 65536
	rng := rand.New(rand.NewPCG(3, 3))
	pack := randBytes(rng, 8*1<<20) // S = 1 MiB, 16 blocks per shard
	p, fbs := faultPool(t, 10)
	writePack(t, p, 8, 2, bs, pack)
	ctx := context.Background()
	reset := func() {
		for _, fb := range fbs {
			fb.ResetCounts()
		}
	}
	reads := func() (calls int, bytes int64, touched []int) {
		for i, fb := range fbs {
			c := fb.Counts(objName)
			calls += c.ReadAts
			bytes += c.BytesRead
			if c.ReadAts > 0 {
				touched = append(touched, i)
			}
		}
		return
	}
	reset()
	r := mustReader(t, p.targets)
	if calls, b, _ := reads(); calls != 10 || b != 10*prefetchLen {
		t.Fatalf("open: %d reads, %d bytes; want 10 reads of %d", calls, b, prefetchLen)
	}
	h := r.Header()
	do := func(off int64, n int) []int {
		t.Helper()
		buf := make([]byte, n)
		if _, _, err := r.ReadAt(ctx, buf, off); err != nil || string(buf) != string(pack[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
		}
		_, _, touched := reads()
		return touched
	}

	// 100 bytes inside block 3 of data shard 2: one read of one block.
	reset()
	off := 2*h.ShardLen + 3*bs + 500
	if touched := do(off, 100); !slices.Equal(touched, []int{2}) {
		t.Fatalf("small read touched shards %v", touched)
	}
	if rr := fbs[2].ReadRanges(objName); len(rr) != 1 || rr[0] != (fault.Range{Off: h.DataOffset() + 3*bs, Len: bs}) {
		t.Fatalf("small read ranges %v", rr)
	}
	// Across a block boundary: one read of two blocks.
	reset()
	do(2*h.ShardLen+4*bs-10, 20)
	if rr := fbs[2].ReadRanges(objName); len(rr) != 1 || rr[0].Len != 2*bs {
		t.Fatalf("boundary read ranges %v", rr)
	}
	// Across a shard boundary: one block of each of two shards.
	reset()
	if touched := do(3*h.ShardLen-10, 20); !slices.Equal(touched, []int{2, 3}) {
		t.Fatalf("cross-shard read touched %v", touched)
	}
	if _, b, _ := reads(); b != 2*bs {
		t.Fatalf("cross-shard read moved %d bytes", b)
	}

	// Degraded: shard 2 lost. A small read must fetch the same block of K
	// other shards and nothing else (plus the failed attempt).
	fbs[2].Lose(objName)
	reset()
	buf := make([]byte, 100)
	_, bad, err := r.ReadAt(ctx, buf, off)
	if err != nil || string(buf) != string(pack[off:off+100]) || !slices.Equal(bad, []int{2}) {
		t.Fatalf("degraded read: bad=%v err=%v", bad, err)
	}
	calls, b, touched := reads()
	if len(touched) != 9 || b != 8*bs || calls != 9 {
		t.Fatalf("degraded read: %d calls, %d bytes, shards %v; want 8 blocks from 8 shards (+1 failed)", calls, b, touched)
	}
	// The Reader remembers: the next read does not retry shard 2.
	reset()
	r.ReadAt(ctx, buf, off)
	if c := fbs[2].Counts(objName).ReadAts; c != 0 {
		t.Fatalf("lost shard retried %d times", c)
	}
}

// TestFaults: failing Puts leave nothing behind; read errors, short reads
// and flipped bits on the way (not on disk) are healed from parity; too
// many failing shards give ErrUnrecoverable; cancellation is not damage.
func TestFaults(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(4, 4))
	pack := randBytes(rng, 6*4096*4+99)

	t.Run("put fails", func(t *testing.T) {
		p, fbs := faultPool(t, 6)
		fbs[3].Fail(fault.OpPut, fault.Nth(1, fault.ErrInjected))
		err := Write(ctx, p.targets, packIDOf(1), Params{K: 4, M: 2, BlockSize: 4096}, pack)
		if !errors.Is(err, fault.ErrInjected) || !strings.HasPrefix(err.Error(), "shard: put shard 3") {
			t.Fatalf("Write: %v", err)
		}
		for i := range p.targets {
			if p.get(i) != nil {
				t.Fatalf("shard %d left behind after failed Write", i)
			}
		}
	})

	t.Run("read errors", func(t *testing.T) {
		p, fbs := faultPool(t, 6)
		writePack(t, p, 4, 2, 4096, pack)
		r := mustReader(t, p.targets)
		rm1 := fbs[1].Fail(fault.OpReadAt, fault.Name("", fault.ErrInjected))
		fbs[2].ShortRead(func(c fault.Call) int { return c.Len / 2 })
		fbs[0].Corrupt(func(name string, off int64, p []byte) { p[len(p)/2] ^= 1 })
		// Shards 0, 1 and 2 misbehave in transit on every block: 3 > M.
		buf := make([]byte, 100)
		if _, _, err := r.ReadAt(ctx, buf, 0); !errors.Is(err, ErrUnrecoverable) {
			t.Fatalf("3 failing shards: %v", err)
		}
		rm1()
		bad := checkReads(t, r, pack, rng, 30)
		if !isSubset(bad, []int{0, 2}) || !slices.Contains(bad, 0) {
			t.Fatalf("bad %v", bad)
		}
		fbs[0].Reset()
		fbs[2].Reset()
		if bad := checkReads(t, r, pack, rng, 30); bad != nil {
			t.Fatalf("transient faults are remembered: bad %v", bad)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		p, _ := faultPool(t, 6)
		writePack(t, p, 4, 2, 4096, pack)
		r := mustReader(t, p.targets)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, _, err := r.ReadAt(cctx, make([]byte, 10), 0)
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnrecoverable) {
			t.Fatalf("canceled read: %v", err)
		}
		if r.Bad() != nil {
			t.Fatalf("cancellation marked shards bad: %v", r.Bad())
		}
		if _, err := Repair(cctx, p.targets); !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled Repair: %v", err)
		}
	})

	t.Run("repair put fails", func(t *testing.T) {
		p, fbs := faultPool(t, 6)
		writePack(t, p, 4, 2, 4096, pack)
		orig := p.getAll()
		p.del(1)
		p.del(4)
		fbs[4].Fail(fault.OpPut, fault.Nth(2, fault.ErrInjected)) // Put #1 was Write's
		if _, err := Repair(ctx, p.targets); !errors.Is(err, fault.ErrInjected) {
			t.Fatalf("Repair: %v", err)
		}
		// Shard 1's rewrite is kept; a second Repair finishes the job.
		if string(p.get(1)) != string(orig[1]) {
			t.Fatalf("successful rewrite of shard 1 was undone")
		}
		checkRepair(t, p, orig, []int{4})
	})
}

// TestConcurrentReads runs reads from many goroutines on one Reader with a
// lost shard and a corrupt block (for -race; the table loads race too).
func TestConcurrentReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	pack := randBytes(rng, 40*4096*4)
	p := newPool(t, "mem", 6)
	writePack(t, p, 4, 2, 4096, pack)
	h := mustReader(t, p.targets).Header()
	p.del(1)
	obj := p.get(3)
	obj[h.DataOffset()+7*4096] ^= 1
	p.set(3, obj)
	r := mustReader(t, p.targets)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				off := rng.Int64N(int64(len(pack)))
				n := 1 + rng.IntN(20000)
				buf := make([]byte, n)
				got, _, err := r.ReadAt(context.Background(), buf, off)
				if (err != nil && got == n) || string(buf[:got]) != string(pack[off:off+int64(got)]) {
					errs <- fmt.Errorf("ReadAt(%d, %d): %d %v", off, n, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := r.Bad(); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("Bad() = %v", got)
	}
}

var _ backend.Backend = (*fault.Backend)(nil)

// TestSizeDamage: a truncated shard and one with trailing garbage are bad
// (Verify names them, even without readData) and Repair restores both.
func TestSizeDamage(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	pack := randBytes(rng, 50_000)
	for _, kind := range []string{"mem", "local"} {
		p := newPool(t, kind, 6)
		writePack(t, p, 4, 2, 4096, pack)
		orig := p.getAll()
		p.set(0, orig[0][:len(orig[0])-1])
		p.set(5, append(slices.Clone(orig[5]), 0))
		rep, err := Verify(context.Background(), p.targets, false)
		if err != nil || !slices.Equal(rep.Bad(), []int{0, 5}) || !strings.Contains(rep.Shards[5].Err.Error(), "size") {
			t.Fatalf("%s: Verify bad %v, err %v", kind, rep.Bad(), err)
		}
		checkReads(t, mustReader(t, p.targets), pack, rng, 20)
		checkRepair(t, p, orig, []int{0, 5})
	}
}

// forge rewrites block b of shard i with other bytes and re-seals its
// checksum table and header, as only a bug or a deliberate attacker would:
// every checksum passes, only parity can tell.
func forge(t *testing.T, p *pool, i, b int) {
	obj := p.get(i)
	h, err := ParseHeader(obj)
	if err != nil {
		t.Fatal(err)
	}
	data := obj[h.DataOffset():]
	data[b*h.BlockSize+1] ^= 0x55
	table := buildTable(data, h.BlockSize)
	copy(obj[HeaderSize:], table)
	h.TableCRC = crc(table)
	copy(obj, h.marshal())
	p.set(i, obj)
}

// TestParityInconsistent: checksums cannot catch a forged block, parity can.
// Verify must flag the stripe and Repair must refuse to guess.
func TestParityInconsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	pack := randBytes(rng, 4*8*4096)
	p := newPool(t, "mem", 6)
	writePack(t, p, 4, 2, 4096, pack)
	forge(t, p, 2, 6)
	rep, err := Verify(context.Background(), p.targets, true)
	if err != nil || rep.OK() || !slices.Equal(rep.InconsistentStripes, []int{6}) || rep.Bad() != nil {
		t.Fatalf("Verify: inconsistent %v bad %v err %v", rep.InconsistentStripes, rep.Bad(), err)
	}
	if _, err := Repair(context.Background(), p.targets); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Repair: %v", err)
	}
}

// TestFlipEveryRegion sweeps deterministically what TestByteFlips samples:
// one flipped byte in the header, the checksum table, the table padding, the
// first and the last block of every data and parity shard of a 4+2 pack.
func TestFlipEveryRegion(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	pack := randBytes(rng, 4*6*4096-100)
	p := newPool(t, "mem", 6)
	writePack(t, p, 4, 2, 4096, pack)
	orig := p.getAll()
	h := mustReader(t, p.targets).Header()
	offsets := map[string]int64{
		"magic":         0,
		"packid":        offPackID + 3,
		"header crc":    offHdrCRC,
		"table entry":   HeaderSize + 4,
		"table padding": HeaderSize + int64(h.Blocks())*4 + 9,
		"first block":   h.DataOffset(),
		"last block":    h.ObjectSize() - 1,
	}
	for i := range 6 {
		for name, off := range offsets {
			obj := slices.Clone(orig[i])
			obj[off] ^= 0x10
			p.set(i, obj)
			r := mustReader(t, p.targets)
			if bad := checkReads(t, r, pack, rng, 5); !isSubset(bad, []int{i}) {
				t.Fatalf("shard %d %s: reads reported %v", i, name, bad)
			}
			rep, err := Verify(context.Background(), p.targets, true)
			if err != nil || !slices.Equal(rep.Bad(), []int{i}) {
				t.Fatalf("shard %d %s: Verify bad %v err %v", i, name, rep.Bad(), err)
			}
			checkRepair(t, p, orig, []int{i})
		}
	}
}
