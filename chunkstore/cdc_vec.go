package chunkstore

import (
	"math/bits"
	"sync"

	"github.com/restic/chunker"
)

// Vector boundary filter (AVX-512 GFNI; cdc_gfni_amd64.s).
//
// The scalar scan is bound by instruction throughput: every byte costs a
// rolling-hash step (table loads, shifts, xors) and a test, ~5-6 cycles per
// byte here, the largest single cost of a full backup. But once a chunk's
// first 64 bytes are hashed, restic's digest is just the window's
// fingerprint, W[0]*x^(8*63) + ... + W[63] mod P, a linear function over
// GF(2) of the 64 window bytes. So are its low 16 bits: the XOR over the
// window offsets i of a linear map of the byte at offset i, and a linear
// map of one byte to one byte is an 8x8 bit matrix, which
// VGF2P8AFFINEQB applies to 64 bytes at once. One ZMM load at offset i
// holds window byte i of 64 consecutive positions, so 64 loads and 128
// affine transforms give the low 16 fingerprint bits of 64 positions, with
// no serial chain at all. A position whose bits under the mask are not all
// zero cannot be a boundary; the rare candidates (one in 2^16) are checked
// exactly with the scalar digest, so the cut points stay restic's.

// useVectorCDC turns the filter on where the CPU has it (a variable so that
// tests and benchmarks can compare with the scalar scan).
var useVectorCDC = haveGFNI

// vecTables are the 128 matrices of a polynomial (by window offset, then
// output byte), built once per polynomial.
var vecTables sync.Map // chunker.Pol -> *[128]uint64

func gfniMatrices(pol chunker.Pol) *[128]uint64 {
	if t, ok := vecTables.Load(pol); ok {
		return t.(*[128]uint64)
	}
	var t [128]uint64
	// v[j] = x^j * x^(8*(63-i)) mod P, i from 63 (newest byte: no shift)
	// down to 0 (oldest), one multiplication by x^8 per step.
	var v [8]uint64
	for j := range v {
		v[j] = 1 << j
	}
	for i := cdcWindow - 1; i >= 0; i-- {
		for k := range 2 {
			var m uint64
			for r := range 8 { // output bit r of byte k
				var row uint64
				for j := range 8 { // input bit j
					row |= (v[j] >> (8*k + r) & 1) << j
				}
				m |= row << (8 * (7 - r))
			}
			t[2*i+k] = m
		}
		for j := range v {
			v[j] = uint64((chunker.Pol(v[j]) << 8).Mod(pol))
		}
	}
	actual, _ := vecTables.LoadOrStore(pol, &t)
	return actual.(*[128]uint64)
}

// windowDigest is restic's digest after hashing the 64 bytes of w (the
// rolling hash with nothing older in the window): w's fingerprint.
func (c *cdc) windowDigest(w []byte) uint64 {
	var d uint64
	shift := c.shift & 63
	for _, b := range w[:cdcWindow] {
		d = (d<<8 | uint64(b)) ^ c.mod[byte(d>>shift)]
	}
	return d
}

// vecMinBytes is the least scan length worth a vector call.
const vecMinBytes = 4 * 64

// scanVec looks for the first boundary at positions from.. of data (the
// window ending at data[q] for position q; from >= 64, hashing primed). It
// returns the chunk length if it found one, else 0 and the first position
// it did not test (the scalar scan goes on from there).
func (c *cdc) scanVec(data []byte, from int, mats *[128]uint64) (cut, next int) {
	masks := c.mask & 0xffff
	q := from
	for len(data)-q >= 64 {
		blocks := (len(data) - q) / 64
		blk, set := gfniScan(&data[q-cdcWindow+1], blocks, mats, masks)
		if blk >= blocks {
			return 0, q + 64*blocks
		}
		base := q + 64*blk
		for ; set != 0; set &= set - 1 {
			p := base + bits.TrailingZeros64(set)
			if c.windowDigest(data[p-cdcWindow+1:p+1])&c.mask == 0 {
				return p + 1, 0
			}
		}
		q = base + 64
	}
	return 0, q
}
