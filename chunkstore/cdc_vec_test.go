package chunkstore

import (
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/restic/chunker"
)

// TestGFNIScanMatchesModel: the vector filter flags exactly the positions
// whose fingerprint has zero bits under the low 16 bits of the mask
// (computed here one position at a time with the scalar digest), for
// several polynomials and mask widths, on OS-like and random data.
func TestGFNIScanMatchesModel(t *testing.T) {
	if !haveGFNI {
		t.Log("this CPU has no AVX-512 GFNI: the vector filter is not used here, so there is nothing to compare")
		return
	}
	rng := rand.New(rand.NewPCG(5, 6))
	data := append(osLike(t, 96<<10), randBytes(7, 32<<10)...)
	for trial := range 6 {
		pol, err := chunker.RandomPolynomial()
		if err != nil {
			t.Fatal(err)
		}
		avg := 1 << []int{6, 9, 12, 16, 18, 20}[trial]
		c := newCDC(pol, 64<<10, 2<<20, avg)
		mats := gfniMatrices(pol)
		masks := c.mask & 0xffff
		from := 63 + rng.IntN(200)
		blocks := (len(data) - from) / 64
		for q := from; blocks > 0; {
			blk, set := gfniScan(&data[q-63], blocks, mats, masks)
			var want uint64
			wantBlk := blocks
			for b := 0; b < blocks && wantBlk == blocks; b++ {
				for j := range 64 {
					p := q + 64*b + j
					if c.windowDigest(data[p-63:p+1])&masks == 0 {
						want |= 1 << j
						wantBlk = b
					}
				}
			}
			if blk != wantBlk || set != want {
				t.Fatalf("pol %v mask %#x from %d: got block %d set %064b, want block %d set %064b",
					pol, masks, q, blk, set, wantBlk, want)
			}
			if blk == blocks {
				break
			}
			q += 64 * (blk + 1)
			blocks -= blk + 1
		}
	}
}

// TestWindowDigestIsRolling: the digest from a window alone equals the
// rolling digest at that position (what the scalar scan continues from).
func TestWindowDigestIsRolling(t *testing.T) {
	pol, err := chunker.RandomPolynomial()
	if err != nil {
		t.Fatal(err)
	}
	c := newCDC(pol, 64<<10, 2<<20, 1<<18)
	data := osLike(t, 8<<10)
	d := c.windowDigest(data[:64])
	for i := 64; i < len(data); i++ {
		d ^= c.out[data[i-64]]
		d = (d<<8 | uint64(data[i])) ^ c.mod[byte(d>>(c.shift&63))]
		if w := c.windowDigest(data[i-63 : i+1]); w != d {
			t.Fatalf("at %d: window digest %x, rolling %x", i, w, d)
		}
	}
}

// TestScanVecMatchesScalar: the first boundary scanVec finds (or the
// position it stops at) agrees with the scalar one-byte scan.
func TestScanVecMatchesScalar(t *testing.T) {
	if !haveGFNI {
		t.Log("no AVX-512 GFNI on this CPU: scanVec is never called here")
		return
	}
	rng := rand.New(rand.NewPCG(8, 9))
	data := append(osLike(t, 512<<10), randBytes(10, 256<<10)...)
	cuts := 0
	for trial := range 200 {
		pol, err := chunker.RandomPolynomial()
		if err != nil {
			t.Fatal(err)
		}
		avg := 1 << (10 + trial%10)
		c := newCDC(pol, 64<<10, 2<<20, avg)
		mats := gfniMatrices(pol)
		from := 64 + rng.IntN(len(data)/2)
		end := from + rng.IntN(len(data)-from)
		buf := data[:end]
		wantCut, _ := c.scan1(buf, from, c.windowDigest(buf[from-64:from]))
		cut, next := c.scanVec(buf, from, mats)
		if cut == 0 && wantCut != 0 && wantCut <= next {
			t.Fatalf("trial %d: scanVec found no cut before %d, scalar cut at %d", trial, next, wantCut)
		}
		if cut != 0 {
			cuts++
			if cut != wantCut {
				t.Fatalf("trial %d: scanVec cut %d, scalar %d", trial, cut, wantCut)
			}
		} else if next < from || (end-next) >= 64 || bits.OnesCount(uint(next-from))%1 != 0 {
			t.Fatalf("trial %d: scanVec stopped at %d of [%d, %d)", trial, next, from, end)
		}
	}
	if cuts < 50 {
		t.Fatalf("only %d of 200 trials found a cut: the test does not exercise the candidate check", cuts)
	}
}
