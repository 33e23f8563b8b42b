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
