package chunkstore

import (
	"bytes"
	"io"
	"math/bits"
	"math/rand/v2"
	"testing"

	"github.com/restic/chunker"
)

// resticCuts returns restic/chunker's chunk lengths for data.
func resticCuts(t testing.TB, data []byte, pol chunker.Pol, min, avg, max int) []int {
	ch := chunker.NewWithBoundaries(bytes.NewReader(data), pol, uint(min), uint(max))
	ch.SetAverageBits(bits.Len(uint(avg)) - 1)
	var cuts []int
	buf := make([]byte, 0, max)
	for {
		c, err := ch.Next(buf[:0])
		if err == io.EOF {
			return cuts
		}
		if err != nil {
			t.Fatal(err)
		}
		cuts = append(cuts, int(c.Length))
	}
}

// cdcCuts runs cdc over data fed in pieces of random sizes (as Ingest's
// refills do), keeping the chunk in progress contiguous.
func cdcCuts(c *cdc, data []byte, r *rand.Rand) []int {
	var cuts []int
	var st cdcState
	start, avail := 0, 0
	for {
		eof := avail == len(data)
		cut := c.next(data[start:avail], &st, eof)
		if cut > 0 {
			cuts = append(cuts, cut)
			start += cut
			continue
		}
		if eof {
			return cuts
		}
		avail = min(len(data), avail+1+r.IntN(3<<20))
	}
}

func TestCDCMatchesRestic(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	osd := osLike(t, 64<<20)
	for _, p := range []struct{ min, avg, max int }{
		{64 << 10, 256 << 10, 2 << 20},
		{4 << 10, 8 << 10, 16 << 10},
		{4 << 10, 4 << 10, 4 << 10},
		{32 << 10, 64 << 10, 256 << 10},
		{512 << 10, 1 << 20, 8 << 20},
		{64 << 10, 64 << 10, 64<<10 + 100},
	} {
		for k := range 3 {
			pol, err := chunker.RandomPolynomial()
			if err != nil {
				t.Fatal(err)
			}
			inputs := [][]byte{
				osd,
				randBytes(uint64(k), 3<<20+r.IntN(1<<20)),
				make([]byte, 1<<20+7),                   // zeros: max-size cuts
				append(make([]byte, p.min-65), 1, 2, 3), // ends in the first 64 hashed bytes
				osd[:p.min-64],
				osd[:p.min+r.IntN(200)],
				osd[:1],
				{},
			}
			c := newCDC(pol, p.min, p.max, p.avg)
			// All three scan loops (4, 2, 1 bytes per step).
			c2 := *c
			c2.four = false
			c1 := c2
			c1.two = false
			for i, in := range inputs {
				want := resticCuts(t, in, pol, p.min, p.avg, p.max)
				got := cdcCuts([]*cdc{c, &c2, &c1}[(i+k)%3], in, r)
				if len(got) != len(want) {
					t.Fatalf("params %+v pol %v input %d: %d chunks, restic %d", p, pol, i, len(got), len(want))
				}
				for j := range got {
					if got[j] != want[j] {
						t.Fatalf("params %+v pol %v input %d chunk %d: length %d, restic %d", p, pol, i, j, got[j], want[j])
					}
				}
			}
		}
	}
}

// randPol returns a random polynomial of degree k; irreducible if one is
// found quickly (restic's chunker does not require it, nor does cdc).
func randPol(r *rand.Rand, k int) chunker.Pol {
	var p chunker.Pol
	for range 200 {
		p = chunker.Pol(1<<k | r.Uint64()&(1<<k-1) | 1)
		if p.Irreducible() {
			break
		}
	}
	return p
}

// TestCDCRandomParams compares cdc with restic/chunker on random
// polynomials of every degree cdc accepts (below 24 scan1, 24..39 the
// two-byte scan, 40..53 scan4 with its normalized digest, whose shift
// 64-k differs per degree), random Min (any residue mod 8, so hashing
// starts at every offset of scan4's four-byte step), random Avg down to a
// few bytes (cuts right after Min, at every offset mod 8 of the step) and
// up to above Max (Max cuts), random Max, on several kinds of input fed
// in random pieces.
func TestCDCRandomParams(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 13))
	osd := osLike(t, 32<<20)
	n := 200
	if testing.Short() {
		n = 40
	}
	var offs [8]int // scan4 cuts by offset from the start of hashing mod 8
	for it := range n {
		k := 9 + it%45
		if it%3 == 0 {
			k = 40 + r.IntN(14) // scan4's range more often
		}
		pol := randPol(r, k)
		mn := 128 + r.IntN(8<<10)
		if r.IntN(4) == 0 {
			mn = 64<<10 + r.IntN(64)
		}
		avg := 1 << (2 + r.IntN(20))
		mx := mn + r.IntN(4*avg+64)
		if r.IntN(8) == 0 {
			mx = mn
		}
		var in []byte
		switch r.IntN(4) {
		case 0:
			o := r.IntN(len(osd) - 5<<20)
			in = osd[o : o+r.IntN(4<<20)+1]
		case 1:
			in = randBytes(r.Uint64(), r.IntN(2<<20))
		case 2: // long runs of a few byte values, as in sparse images
			in = make([]byte, r.IntN(2<<20))
			for i := 0; i < len(in); {
				run := 1 + r.IntN(5000)
				b := byte(r.IntN(3))
				for ; run > 0 && i < len(in); run-- {
					in[i] = b
					i++
				}
			}
		default: // just around Min and Max
			in = osd[:max(0, mn-70+r.IntN(140))]
			if r.IntN(2) == 0 {
				in = osd[:mx+r.IntN(9)]
			}
		}
		c := newCDC(pol, mn, mx, avg)
		if c == nil {
			t.Fatalf("newCDC(%v) = nil", pol)
		}
		want := resticCuts(t, in, pol, mn, avg, mx)
		got := cdcCuts(c, in, r)
		if len(got) != len(want) {
			t.Fatalf("deg %d pol %v min %d avg %d max %d len %d: %d chunks, restic %d",
				k, pol, mn, avg, mx, len(in), len(got), len(want))
		}
		for j := range got {
			if got[j] != want[j] {
				t.Fatalf("deg %d pol %v min %d avg %d max %d len %d chunk %d: length %d, restic %d",
					k, pol, mn, avg, mx, len(in), j, got[j], want[j])
			}
			if c.four && got[j] > mn && got[j] < mx {
				offs[(got[j]-mn)%8]++
			}
		}
	}
	for i, v := range offs {
		if v == 0 {
			t.Errorf("no scan4 cut at offset %d mod 8 after Min: %v", i, offs)
		}
	}
}

// TestCDCScan4Degrees checks the normalized scan4 against scan1 (restic's
// loop) for every degree it handles, at every start offset mod 4 and
// every end of data mod 8, and when the mask has bits at or above the
// degree (only bits below it can be tested, as in restic).
func TestCDCScan4Degrees(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	osd := osLike(t, 8<<20)
	for k := 40; k <= 53; k++ {
		for range 4 {
			pol := randPol(r, k)
			avg := 1 << (4 + r.IntN(10))
			if r.IntN(4) == 0 {
				avg = 1 << (k + r.IntN(3)) // mask reaches past the digest
			}
			c := newCDC(pol, 4<<10, 1<<20, avg)
			if !c.four {
				t.Fatalf("degree %d: no scan4", k)
			}
			o := r.IntN(len(osd) - 70<<10)
			for from := 64; from < 68; from++ {
				for end := 0; end < 8; end++ {
					data := osd[o : o+from+64<<10+end-r.IntN(2)*(64<<10-200)]
					digest := r.Uint64() & (1<<k - 1)
					wc, wd := c.scan1(data, from, digest)
					gc, gd := c.scan4(data, from, digest)
					if gc != wc || (gc == 0 && gd != wd) {
						t.Fatalf("degree %d avg %d from %d len %d: scan4 (%d, %#x), scan1 (%d, %#x)",
							k, avg, from, len(data), gc, gd, wc, wd)
					}
				}
			}
		}
	}
}
