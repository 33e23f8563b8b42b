package chunkstore

import (
	"encoding/binary"

	"github.com/restic/chunker"
)

// cdc finds content-defined chunk boundaries exactly where
// restic/chunker.Chunker (NewWithBoundaries + SetAverageBits) puts them,
// but scans the caller's contiguous buffer in place: no copy of the input
// into the chunker's buffer, none into a chunk buffer, and no 64-byte ring
// buffer (the byte leaving the window is read from the buffer itself).
// Boundaries must never change: dedup against existing repositories
// depends on them (TestCDCMatchesRestic compares with restic/chunker).
//
// restic's algorithm, per chunk: the first Min-64 bytes are skipped
// unhashed; the digest starts at 1 (the reset slides in a byte 1 behind 63
// zero bytes, so the first 63 bytes hashed slide out 0 and the 64th slides
// out 1); after each byte hashed the chunk ends if its length is at least
// Min and the digest's low bits (mask = Avg-1) are zero, or at Max.
type cdc struct {
	out, mod [256]uint64
	shift    uint
	mask     uint64
	min, max int
	// Two bytes per step (see scan): R is "times x^8 mod P".
	two     bool        // the polynomial's degree allows it
	out2    [256]uint64 // R(out[b])
	out3    [256]uint64 // R(R(out[b]))
	ta, tb  [256]uint64 // b * x^(k+8) mod P, b * x^k mod P
	lowMask uint64      // x^k - 1
	shift2  uint        // k - 16
	// Four bytes per step (scan4), on the digest normalized to the top of
	// the word (see scan4).
	four  bool
	nsh   uint   // 64 - k
	nmask uint64 // mask << nsh (the bits of mask below x^k)
	ntab  cdcTables
	// vec are the matrices of the vector boundary filter (cdc_vec.go), nil
	// when the CPU lacks it.
	vec *[128]uint64
}

// cdcTables are scan4's tables, normalized (shifted left by 64-k) and in
// one struct so that the loop addresses them all from one register.
type cdcTables struct {
	m [4][256]uint64 // m[i][b] = N(b * x^(k+8i) mod P)
	o [4][256]uint64 // o[i][b] = N(R^(i+1)(out[b])): b leaving i+1 steps ago
}

const cdcWindow = 64

// newCDC returns nil for a polynomial restic/chunker cannot use either
// (degree above 53; below 9 is no Rabin polynomial of any use).
func newCDC(pol chunker.Pol, min, max, avg int) *cdc {
	k := pol.Deg()
	if k < 9 || k > 53 {
		return nil
	}
	c := &cdc{min: min, max: max, mask: uint64(avg) - 1}
	c.shift = uint(k - 8)
	appendByte := func(h chunker.Pol, b byte) chunker.Pol {
		h <<= 8
		h |= chunker.Pol(b)
		return h.Mod(pol)
	}
	for b := range 256 {
		var h chunker.Pol
		h = appendByte(h, byte(b))
		for range cdcWindow - 1 {
			h = appendByte(h, 0)
		}
		c.out[b] = uint64(h)
		c.mod[b] = uint64(chunker.Pol(uint64(b)<<uint(k)).Mod(pol) | (chunker.Pol(b) << uint(k)))
	}
	if k >= 24 && k <= 53 {
		c.two = true
		c.lowMask = uint64(1)<<uint(k) - 1
		c.shift2 = uint(k - 16)
		r := func(e uint64) uint64 { return e<<8 ^ c.mod[byte(e>>c.shift)] }
		for b := range 256 {
			c.out2[b] = r(c.out[b])
			c.out3[b] = r(c.out2[b])
			c.tb[b] = c.mod[b] & c.lowMask
			c.ta[b] = r(c.tb[b])
		}
	}
	if useVectorCDC {
		c.vec = gfniMatrices(pol)
	}
	if k >= 40 && k <= 53 {
		c.four = true
		c.nsh = uint(64 - k)
		c.nmask = (c.mask & c.lowMask) << c.nsh
		r := func(e uint64) uint64 { return e<<8 ^ c.mod[byte(e>>c.shift)] }
		for b := range 256 {
			m, o := c.tb[b], c.out2[b]
			for i := range 4 {
				c.ntab.m[i][b] = m << c.nsh
				c.ntab.o[i][b] = o << c.nsh
				m, o = r(m), r(o)
			}
		}
	}
	return c
}

// cdcState is the scan state of the chunk in progress.
type cdcState struct {
	pos    int // bytes of the chunk already hashed or skipped
	digest uint64
	primed bool // the first 64 hashed bytes are done
}

func (st *cdcState) reset() { *st = cdcState{} }

// next looks for the end of the chunk that starts at data[0]; data holds
// the bytes of the chunk read so far (the state remembers how far previous
// calls scanned). It returns the chunk length, or 0 when more data is
// needed. At eof the rest is the last chunk.
func (c *cdc) next(data []byte, st *cdcState, eof bool) int {
	n := len(data)
	if n == 0 {
		return 0
	}
	h0 := c.min - cdcWindow // hashing starts here (min >= 4 KiB)
	if st.pos < h0 {
		st.pos = min(h0, n)
		st.digest = 1
		if st.pos < h0 {
			if eof {
				return n
			}
			return 0
		}
	}
	limit := min(n, c.max)
	digest := st.digest
	i := st.pos
	if !st.primed {
		// The first 64 bytes hashed slide out the reset window.
		for ; i < limit && i < h0+cdcWindow; i++ {
			var o byte
			if i == h0+cdcWindow-1 {
				o = 1
			}
			digest ^= c.out[o]
			digest = (digest<<8 | uint64(data[i])) ^ c.mod[byte(digest>>c.shift)]
			// Only the 64th byte can end the chunk: before it len < Min.
			if i+1 >= c.min && digest&c.mask == 0 {
				st.reset()
				return i + 1
			}
		}
		if i == h0+cdcWindow {
			st.primed = true
		}
	}
	if st.primed && i < limit {
		var cut int
		cut, digest = c.scan(data[:limit], i, digest)
		if cut > 0 {
			st.reset()
			return cut
		}
		i = limit
	}
	if i >= c.max {
		st.reset()
		return c.max
	}
	if eof {
		st.reset()
		return n
	}
	st.pos, st.digest = i, digest
	return 0
}

// scan hashes data[from:] (from >= 64) and returns the length of the chunk
// ending at the first boundary, or 0, and the digest.
//
// One step of restic's rolling hash is d' = R(d ^ out[o]) ^ b, with o the
// byte leaving the window, b the byte entering it and R(e) = e*x^8 mod P =
// e<<8 ^ mod[e>>shift], which is linear. So d' = R(d) ^ g with g =
// R(out[o]) ^ b independent of d, and two steps are
// d” = R(R(d)) ^ R(g) ^ g' where R(R(d)) = d*x^16 mod P takes two table
// lookups on d's top 16 bits that run in parallel. The chain from one
// digest to the next is then one shift, one (parallel) load and xors per
// two bytes instead of per byte: the one-byte loop is bound by that
// latency, not by throughput. The odd digest d' is computed beside the
// chain, only to test it for a boundary.
func (c *cdc) scan(data []byte, from int, digest uint64) (int, uint64) {
	if c.vec != nil && len(data)-from >= vecMinBytes {
		cut, next := c.scanVec(data, from, c.vec)
		if cut > 0 {
			return cut, 0 // the caller resets the state at a cut
		}
		if next > from {
			from, digest = next, c.windowDigest(data[next-cdcWindow:next])
		}
		if from == len(data) {
			return 0, digest
		}
	}
	if c.four {
		return c.scan4(data, from, digest)
	}
	if !c.two {
		return c.scan1(data, from, digest)
	}
	mask, s1, s2, low := c.mask, c.shift&63, c.shift2&63, c.lowMask
	out2, out3, ta, tb, mod := &c.out2, &c.out3, &c.ta, &c.tb, &c.mod
	in := data[from:]
	old := data[from-cdcWindow : len(data)-cdcWindow]
	old = old[:len(in)]
	j := 0
	for ; j+1 < len(in) && j+1 < len(old); j += 2 {
		o0, o1 := old[j], old[j+1]
		b0, b1 := uint64(in[j]), uint64(in[j+1])
		g0 := out2[o0] ^ b0
		d1 := digest<<8 ^ mod[byte(digest>>s1)] ^ g0
		h := out3[o0] ^ b0<<8 ^ out2[o1] ^ b1
		d2 := (digest<<16)&low ^ ta[byte(digest>>s1)] ^ tb[byte(digest>>s2)] ^ h
		if d1&mask == 0 {
			return from + j + 1, d1
		}
		digest = d2
		if d2&mask == 0 {
			return from + j + 2, d2
		}
	}
	if j < len(in) {
		return c.scan1(data, from+j, digest)
	}
	return 0, digest
}

// scan1 is scan one byte per step (restic's loop without the ring buffer).
func (c *cdc) scan1(data []byte, from int, digest uint64) (int, uint64) {
	out, mod := &c.out, &c.mod
	mask, shift := c.mask, c.shift&63
	in := data[from:]
	old := data[from-cdcWindow : len(data)-cdcWindow]
	old = old[:len(in)]
	for j, b := range in {
		digest ^= out[old[j]]
		digest = (digest<<8 | uint64(b)) ^ mod[byte(digest>>shift)]
		if digest&mask == 0 {
			return from + j + 1, digest
		}
	}
	return 0, digest
}

// scan4 is scan four bytes per step on the normalized digest D = d<<(64-k)
// (N(p) = p<<(64-k)): its top byte is then D>>56 and R becomes D<<8 ^
// m[0][D>>56], all shifts by constants. Shifts by a variable (k - 8 etc.)
// need CX on amd64 without BMI2 (GOAMD64=v1), which made the old loop
// shuffle and spill registers; only the entering bytes take one variable
// shift per step here. The chain is d4 = R^4(D) ^ H, R^4(D) = D*x^32 mod P
// from four parallel lookups on D's top 32 bits, H from the four bytes
// entering (a big-endian 32-bit word, as R^i(b) = b<<8i for these degrees)
// and leaving the window. d1..d3 are computed beside it only to test them
// for a boundary. The loop is bound by that chain's latency: a variant
// with d4 from d2 (two-step tables, 12 lookups instead of 16) measured
// 25% slower, an 8-byte step no faster.
func (c *cdc) scan4(data []byte, from int, digest uint64) (int, uint64) {
	sh := c.nsh & 63
	// win[0:4] are the bytes leaving the window, win[64:68] those
	// entering; the loop slides win instead of indexing it so that both
	// need no bounds check and little is live across the loop.
	win := data[from-cdcWindow:]
	cut, d := scan4Loop(&c.ntab, win, digest<<sh, sh, c.nmask)
	if cut > 0 {
		return from + cut, d >> sh
	}
	if n := -cut; n < len(win)-cdcWindow {
		return c.scan1(data, from+n, d>>sh)
	}
	return 0, d >> sh
}

// scan4Loop is scan4's loop on the normalized digest d. It returns the
// chunk length from win[64] at the first boundary, or minus the number of
// bytes hashed if none.
func scan4Loop(t *cdcTables, win []byte, d uint64, sh uint, mask uint64) (int, uint64) {
	n := len(win)
	for len(win) >= cdcWindow+4 {
		x0, x1, x2, x3 := win[0], win[1], win[2], win[3]
		in := uint64(binary.BigEndian.Uint32(win[cdcWindow:])) << (sh & 63)
		// The part of d4 that does not depend on d, xored in first: Go
		// does not reassociate, and the chain from d to d4 (which bounds
		// the loop) is then one load and two xors, not nine xors.
		ox := t.o[3][x0] ^ t.o[2][x1] ^ t.o[1][x2] ^ t.o[0][x3] ^ in
		i1, i2, i3, i4 := d>>56, byte(d>>48), byte(d>>40), byte(d>>32)
		// in>>24 and in>>16 leave the following entering bytes below bit
		// 64-k of d1 and d2, where the mask does not look; d2<<8 then
		// brings b2 to its place in d3 and leaves b3 below it (64-k >= 8).
		d1 := d<<8 ^ t.m[0][i1] ^ t.o[0][x0] ^ in>>24
		d2 := d<<16 ^ t.m[1][i1] ^ t.m[0][i2] ^ t.o[1][x0] ^ t.o[0][x1] ^ in>>16
		d3 := d2<<8 ^ t.m[0][d2>>56] ^ t.o[0][x2]
		d4 := (t.m[3][i1] ^ t.m[2][i2]) ^ (t.m[1][i3] ^ t.m[0][i4]) ^ (d<<32 ^ ox)
		if d1&mask == 0 || d2&mask == 0 || d3&mask == 0 || d4&mask == 0 {
			p := n - len(win)
			switch {
			case d1&mask == 0:
				return p + 1, d1
			case d2&mask == 0:
				return p + 2, d2
			case d3&mask == 0:
				return p + 3, d3
			}
			return p + 4, d4
		}
		d = d4
		win = win[4:]
	}
	return -(n - len(win)), d
}
