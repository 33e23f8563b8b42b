package shard

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// scanWindow is how much of each shard Verify and Repair hold in memory at
// a time: (K+M) * 1 MiB, whatever the pack size.
const scanWindow = 1 << 20

// maxBadBlocksListed caps ShardStatus.BadBlocks so a shard of garbage does
// not produce a report of 16384 entries; BadBlockCount has the total.
const maxBadBlocksListed = 64

// ShardStatus is what Verify found about one shard.
type ShardStatus struct {
	Index int
	Name  string
	// Missing is set when the object does not exist.
	Missing bool
	// Err is the first problem that makes the whole shard unusable:
	// missing, bad or foreign header, bad checksum table, wrong size.
	Err error
	// BadBlocks lists (up to 64) blocks that failed their checksum or could
	// not be read; BadBlockCount counts them all. Only with readData.
	BadBlocks     []int
	BadBlockCount int
	// FirstBlockErr describes the first bad block.
	FirstBlockErr error
}

// OK reports whether the shard is present and, as far as checked, intact.
func (s ShardStatus) OK() bool { return s.Err == nil && s.BadBlockCount == 0 }

// Report is the result of Verify.
type Report struct {
	// Header holds the fields all shards share (Index 0, TableCRC 0); zero
	// when no header could be read.
	Header Header
	Shards []ShardStatus
	// DataChecked is set when every block was read (readData).
	DataChecked bool
	// LostStripes lists stripes (block indexes) with fewer than K good
	// blocks: data lost. Only with readData.
	LostStripes []int
	// InconsistentStripes lists stripes whose blocks all pass their
	// checksums but whose parity does not match the data: a writer bug or
	// damage crafted to fit CRC-32C. Repair cannot tell which shard is wrong.
	InconsistentStripes []int
}

// Bad returns the indexes of shards that are not OK.
func (r Report) Bad() []int {
	var out []int
	for _, s := range r.Shards {
		if !s.OK() {
			out = append(out, s.Index)
		}
	}
	return out
}

// OK reports whether every shard is intact and parity consistent.
func (r Report) OK() bool {
	return len(r.Bad()) == 0 && len(r.LostStripes) == 0 && len(r.InconsistentStripes) == 0
}

// Verify checks presence, size, header and checksum table of every shard,
// and with readData every block checksum plus the consistency of parity with
// data (reedsolomon Verify, stripe-wise). It returns per-shard status. The
// error is non-nil only when the check could not run (context, I/O on every
// shard) or the pack is unrecoverable (wrapping ErrUnrecoverable); damage
// that parity can repair is reported in the Report, not as an error.
func Verify(ctx context.Context, targets []Target, readData bool) (Report, error) {
	rep, _, err := verify(ctx, targets, readData)
	return rep, err
}

func verify(ctx context.Context, targets []Target, readData bool) (Report, *Reader, error) {
	r, err := open(ctx, targets)
	if r == nil {
		return Report{}, nil, err
	}
	rep := Report{Header: r.h, Shards: make([]ShardStatus, len(targets))}
	for i := range targets {
		st := &rep.Shards[i]
		st.Index, st.Name = i, targets[i].Name
		st.Err = r.sh[i].openErr
		if st.Err == nil {
			st.Err = r.sh[i].tableErr // a bad table page prefetched at open
		}
		st.Missing = errors.Is(st.Err, backend.ErrNotFound)
	}
	if err != nil {
		return rep, r, err
	}

	// Size and table of every shard with a good header.
	var wg sync.WaitGroup
	for i := range targets {
		st := &rep.Shards[i]
		if st.Err != nil {
			continue
		}
		wg.Go(func() {
			info, err := targets[i].BE.Stat(ctx, targets[i].Name)
			switch {
			case err != nil:
				st.Err = fmt.Errorf("shard: shard %d (%s): %w", i, targets[i].Name, err)
				st.Missing = errors.Is(err, backend.ErrNotFound)
				return
			case info.Size != r.sh[i].hdr.ObjectSize():
				st.Err = corruptf("shard: shard %d (%s): size %d, want %d", i, targets[i].Name, info.Size, r.sh[i].hdr.ObjectSize())
				return
			}
			if _, err := r.table(ctx, i); err != nil {
				st.Err = err
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, r, fmt.Errorf("shard: verify: %w", err)
	}
	nbad := len(rep.Bad())
	if !readData {
		if nbad > r.h.M {
			return rep, r, fmt.Errorf("shard: %d of %d shards bad (M=%d): %w", nbad, len(targets), r.h.M, ErrUnrecoverable)
		}
		return rep, r, nil
	}

	use := make([]bool, len(targets))
	for i := range use {
		use[i] = rep.Shards[i].Err == nil
	}
	k, total, bsz := r.h.K, r.h.K+r.h.M, r.h.BlockSize
	stripe := make([][]byte, total)
	err = r.scan(ctx, use, func(w0, nb int, bufs [][]byte, goods [][]bool, damages []error) error {
		allGood := true
		for i := range total {
			if !use[i] {
				allGood = false
				continue
			}
			st := &rep.Shards[i]
			for j := range nb {
				if !goods[i][j] {
					allGood = false
					if st.BadBlockCount == 0 {
						st.FirstBlockErr = damages[i]
					}
					st.BadBlockCount++
					if len(st.BadBlocks) < maxBadBlocksListed {
						st.BadBlocks = append(st.BadBlocks, w0+j)
					}
				}
			}
		}
		// Fast path: RS is byte-wise, so verifying the window verifies
		// each of its stripes at once.
		if allGood && r.enc != nil {
			if ok, err := r.enc.Verify(bufs); err == nil && ok {
				return nil
			}
		}
		for j := range nb {
			good := 0
			for i := range total {
				stripe[i] = nil
				if use[i] && goods[i][j] {
					stripe[i] = bufs[i][j*bsz : (j+1)*bsz]
					good++
				}
			}
			switch {
			case good < k:
				rep.LostStripes = append(rep.LostStripes, w0+j)
			case good == total && r.enc != nil:
				if ok, err := r.enc.Verify(stripe); err != nil || !ok {
					rep.InconsistentStripes = append(rep.InconsistentStripes, w0+j)
				}
			}
		}
		return nil
	})
	if err != nil {
		return rep, r, err
	}
	rep.DataChecked = true
	if len(rep.LostStripes) > 0 {
		return rep, r, fmt.Errorf("shard: %d stripes lost (first: block %d), %d of %d shards bad (M=%d): %w",
			len(rep.LostStripes), rep.LostStripes[0], len(rep.Bad()), total, r.h.M, ErrUnrecoverable)
	}
	return rep, r, nil
}

// scan reads the shards marked in use window by window, all shards of a
// window in parallel, and calls fn with each window's blocks and checksum
// results (bufs[i] and goods[i] are nil for shards not in use; buffers are
// reused, so fn must copy what it keeps).
func (r *Reader) scan(ctx context.Context, use []bool, fn func(w0, nb int, bufs [][]byte, goods [][]bool, damages []error) error) error {
	bsz, nblocks := r.h.BlockSize, r.h.Blocks()
	w := max(1, scanWindow/bsz)
	bufs := make([][]byte, len(use))
	goods := make([][]bool, len(use))
	damages := make([]error, len(use))
	fatals := make([]error, len(use))
	for i := range use {
		if use[i] {
			bufs[i] = make([]byte, min(w, nblocks)*bsz)
			goods[i] = make([]bool, min(w, nblocks))
		}
	}
	for w0 := 0; w0 < nblocks; w0 += w {
		nb := min(w, nblocks-w0)
		var wg sync.WaitGroup
		for i := range use {
			if !use[i] {
				continue
			}
			wg.Go(func() {
				damages[i], fatals[i] = r.readBlocks(ctx, i, w0, nb, bufs[i], goods[i], nil)
			})
		}
		wg.Wait()
		for i := range use {
			if fatals[i] != nil {
				return fmt.Errorf("shard: scan shard %d: %w", i, fatals[i])
			}
		}
		wb := make([][]byte, len(use))
		wg2 := make([][]bool, len(use))
		for i := range use {
			if use[i] {
				wb[i], wg2[i] = bufs[i][:nb*bsz], goods[i][:nb]
			}
		}
		if err := fn(w0, nb, wb, wg2, damages); err != nil {
			return err
		}
	}
	return nil
}

// Repair rewrites every missing or damaged shard (whole, through Put, so
// atomically and durably) from the good blocks of the others, stripe by
// stripe, and returns the indexes it rewrote, ascending. Rewritten shards
// are byte-identical to what Write produced. It fails with ErrUnrecoverable
// when some stripe has fewer than K good blocks (more than M shards bad
// there), and with ErrCorrupt when parity is inconsistent with data that
// passes every checksum (it cannot tell which shard to trust).
func Repair(ctx context.Context, targets []Target) ([]int, error) {
	rep, r, err := verify(ctx, targets, true)
	if err != nil {
		return nil, fmt.Errorf("shard: repair: %w", err)
	}
	if n := len(rep.InconsistentStripes); n > 0 {
		return nil, fmt.Errorf("shard: repair: parity inconsistent in %d stripes (first: block %d) although every checksum matches: %w",
			n, rep.InconsistentStripes[0], ErrCorrupt)
	}
	bad := rep.Bad()
	if len(bad) == 0 {
		return nil, nil
	}
	total, bsz, s := r.h.K+r.h.M, r.h.BlockSize, int(r.h.ShardLen)
	rebuilt := make([][]byte, total)
	isBad := make([]bool, total)
	for _, i := range bad {
		rebuilt[i] = make([]byte, s)
		isBad[i] = true
	}
	use := make([]bool, total)
	for i := range use {
		use[i] = rep.Shards[i].Err == nil
	}
	stripe := make([][]byte, total)
	required := make([]bool, total)
	err = r.scan(ctx, use, func(w0, nb int, bufs [][]byte, goods [][]bool, _ []error) error {
		for j := range nb {
			b := w0 + j
			good, missing := 0, 0
			for i := range total {
				stripe[i], required[i] = nil, false
				if use[i] && goods[i][j] {
					stripe[i] = bufs[i][j*bsz : (j+1)*bsz]
					good++
				} else if isBad[i] {
					// Reconstruct straight into the rebuilt shard.
					stripe[i] = rebuilt[i][b*bsz : b*bsz : (b+1)*bsz]
					required[i] = true
					missing++
				}
			}
			if good < r.h.K {
				return fmt.Errorf("shard: repair: stripe %d has %d of K=%d good blocks (changed since verify?): %w", b, good, r.h.K, ErrUnrecoverable)
			}
			if missing > 0 {
				if r.enc == nil {
					return fmt.Errorf("shard: repair: stripe %d: no parity (M=0): %w", b, ErrUnrecoverable)
				}
				if err := r.enc.ReconstructSome(stripe, required); err != nil {
					return fmt.Errorf("shard: repair: stripe %d: %w", b, err)
				}
			}
			for _, i := range bad {
				copy(rebuilt[i][b*bsz:(b+1)*bsz], stripe[i])
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := putAll(ctx, targets, r.h, rebuilt, bad, false); err != nil {
		return nil, fmt.Errorf("shard: repair: %w", err)
	}
	return bad, nil
}
