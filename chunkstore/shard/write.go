package shard

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/reedsolomon"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// ErrEmpty is returned by Write for an empty pack: a sealed pack always has
// at least its own header, and PackLen 0 would make ShardLen 0, a degenerate
// layout not worth a special case in every reader.
var ErrEmpty = errors.New("shard: empty pack")

// maxParallelPuts bounds concurrent Puts; with one shard per pool directory
// (usually one disk each) K+M is small, the bound only guards K+M = 256.
const maxParallelPuts = 32

// Write erasure-codes pack into len(targets) == K+M shards and Puts them all
// in parallel, each durable before Write returns. packID is recorded in
// every shard header. If any Put fails, the shards already written are
// deleted and the first error is returned.
//
// Parity is computed over whole shards in one reedsolomon Encode call (SIMD,
// split across goroutines by the library). Reed-Solomon works byte position
// by byte position, so that is exactly the stripe-wise code: parity block b
// depends only on the data blocks b, which is what lets readers rebuild one
// stripe from that stripe alone.
//
// Memory: the data shards are slices of pack (only the last, partial one is
// copied to be padded), plus M*ShardLen bytes of parity.
func Write(ctx context.Context, targets []Target, packID [32]byte, p Params, pack []byte) error {
	p, err := p.normalized()
	if err != nil {
		return err
	}
	if len(targets) != p.K+p.M {
		return fmt.Errorf("shard: %d targets for K=%d M=%d", len(targets), p.K, p.M)
	}
	if len(pack) == 0 {
		return ErrEmpty
	}
	s := shardLen(int64(len(pack)), p.K, p.BlockSize)
	if s > MaxShardLen {
		return fmt.Errorf("shard: pack of %d bytes too large for K=%d (shard %d > %d bytes)", len(pack), p.K, s, MaxShardLen)
	}
	shards := splitPack(pack, p.K, p.M, int(s))
	defer recycleParity(shards[p.K:])
	if p.M > 0 {
		enc, err := encoder(p.K, p.M)
		if err != nil {
			return err
		}
		if err := enc.Encode(shards); err != nil {
			return fmt.Errorf("shard: encode: %w", err)
		}
	}
	base := Header{
		Version: Version, K: p.K, M: p.M, BlockSize: p.BlockSize,
		ShardLen: s, PackLen: int64(len(pack)), PackID: packID,
	}
	return putAll(ctx, targets, base, shards, nil, true)
}

// encoders caches one reedsolomon.Encoder per (K, M): building one computes
// the coding matrix, and its inversion cache (decode matrices per set of
// missing shards) pays off across Readers of many packs. Encoders are safe
// for concurrent use (the inversion tree is RWMutex-guarded).
var encoders sync.Map // [2]int -> reedsolomon.Encoder

func encoder(k, m int) (reedsolomon.Encoder, error) {
	key := [2]int{k, m}
	if e, ok := encoders.Load(key); ok {
		return e.(reedsolomon.Encoder), nil
	}
	e, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, fmt.Errorf("shard: reedsolomon K=%d M=%d: %w", k, m, err)
	}
	actual, _ := encoders.LoadOrStore(key, e)
	return actual.(reedsolomon.Encoder), nil
}

// splitPack returns K+M shard buffers of length s: data shards alias pack
// where they are full, the partial one is a padded copy, all-padding shards
// share one zero buffer (Encode never writes data shards), parity is fresh.
func splitPack(pack []byte, k, m, s int) [][]byte {
	shards := make([][]byte, k+m)
	var zero []byte
	for i := range k {
		lo := i * s
		switch {
		case lo+s <= len(pack):
			shards[i] = pack[lo : lo+s : lo+s]
		case lo < len(pack):
			b := backend.AlignedBuffer(s)
			copy(b, pack[lo:])
			shards[i] = b
		default:
			if zero == nil {
				zero = backend.AlignedBuffer(s)
			}
			shards[i] = zero
		}
	}
	for i := k; i < k+m; i++ {
		shards[i] = getParityBuf(s)
	}
	return shards
}

// parityBufs recycles parity shard buffers: Encode overwrites them whole,
// and a fresh 4 MiB buffer per parity shard and pack costs a clear and page
// faults. A sync.Pool, so an idle process gives the memory back.
var parityBufs sync.Pool // *[]byte

func getParityBuf(n int) []byte {
	if bp, ok := parityBufs.Get().(*[]byte); ok && cap(*bp) >= n {
		return (*bp)[:n]
	}
	return backend.AlignedBuffer(n)
}

// recycleParity returns parity buffers once their shards are written (the
// backends' Put has consumed its reader when it returns).
func recycleParity(parity [][]byte) {
	for _, b := range parity {
		parityBufs.Put(&b)
	}
}

// putAll writes the shards whose index is in only (all if only is nil) with
// headers derived from base, in parallel, and returns the first error. With
// cleanup, a failure deletes what this call wrote (Write: a partial pack is
// garbage); Repair passes false because each rewritten shard is an
// improvement on its own.
func putAll(ctx context.Context, targets []Target, base Header, shards [][]byte, only []int, cleanup bool) error {
	if only == nil {
		only = make([]int, len(shards))
		for i := range only {
			only[i] = i
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		written  []int
		wg       sync.WaitGroup
		sem      = make(chan struct{}, maxParallelPuts)
	)
	for _, i := range only {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := putShard(ctx, targets[i], base, i, shards[i])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
					if cleanup {
						cancel() // the rest would be deleted anyway
					}
				}
				return
			}
			written = append(written, i)
		}()
	}
	wg.Wait()
	if firstErr != nil && cleanup {
		// Clean up even if ctx was canceled: a partial set of shards is
		// garbage that only a later prune would find.
		dctx := context.WithoutCancel(ctx)
		for _, i := range written {
			_ = targets[i].BE.Delete(dctx, targets[i].Name)
		}
	}
	return firstErr
}

func putShard(ctx context.Context, t Target, base Header, idx int, data []byte) error {
	h := base
	h.Index = idx
	table := buildTable(data, h.BlockSize)
	h.TableCRC = crc(table)
	hdr := h.marshal()
	size := int64(len(hdr)) + int64(len(table)) + int64(len(data))
	// Buffers, not a MultiReader: a backend may write the (aligned) data
	// straight from the pack buffer (backend/local, with O_DIRECT).
	if err := t.BE.Put(ctx, t.Name, backend.NewBuffers(hdr, table, data), size); err != nil {
		return fmt.Errorf("shard: put shard %d (%s): %w", idx, t.Name, err)
	}
	return nil
}
