package chunkstore

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// entropyRef is looksIncompressible's test written out: the Shannon entropy
// of the strided 4096-byte sample, above 7.85 bits per byte, and no value
// in more than 1/16 of the sample.
func entropyRef(b []byte) bool {
	const samples = 4096
	if len(b) < samples*2 {
		return false
	}
	stride := len(b) / samples
	var hist [256]int
	for i := range samples {
		hist[b[i*stride]]++
	}
	var h float64
	for _, n := range hist {
		if n > samples/16 {
			return false
		}
		if n != 0 {
			p := float64(n) / samples
			h -= p * math.Log2(p)
		}
	}
	return h > 7.85
}

// TestLooksIncompressible: random data is recognised, OS data and runs are
// not, and frames drawn from alphabets of every size around the threshold
// (where the table-driven sum must agree with the entropy formula) give
// the reference answer.
func TestLooksIncompressible(t *testing.T) {
	if !looksIncompressible(randBytes(3, 64<<10)) {
		t.Error("random frame not recognised as incompressible")
	}
	if looksIncompressible(osLike(t, 64<<10)) {
		t.Error("OS data taken for incompressible")
	}
	if looksIncompressible(make([]byte, 64<<10)) {
		t.Error("zeros taken for incompressible")
	}
	rng := rand.New(rand.NewPCG(11, 12))
	yes := 0
	for alphabet := 150; alphabet <= 256; alphabet++ {
		for skew := range 4 {
			b := make([]byte, 64<<10)
			for i := range b {
				v := rng.IntN(alphabet)
				if skew > 0 && rng.IntN(8) < skew {
					v = rng.IntN(alphabet/4 + 1)
				}
				b[i] = byte(v)
			}
			got, want := looksIncompressible(b), entropyRef(b)
			if got != want {
				t.Fatalf("alphabet %d skew %d: got %v, reference %v", alphabet, skew, got, want)
			}
			if got {
				yes++
			}
		}
	}
	if yes == 0 || yes == 107*4 {
		t.Fatalf("%d of %d frames incompressible: the cases do not straddle the threshold", yes, 107*4)
	}
}

// TestEncodePartsInPlace: a worker's encode leaves compressed frames in its
// work buffer and raw frames in the chunk (nothing copied for them), and the
// parts are exactly the blob encode makes, which decodes to the chunk (for
// OS-like data, which compresses, and random data, stored raw).
func TestEncodePartsInPlace(t *testing.T) {
	within := func(p, buf []byte) bool {
		if len(p) == 0 || cap(buf) == 0 {
			return false
		}
		b := unsafe.Pointer(unsafe.SliceData(buf[:cap(buf)]))
		q := unsafe.Pointer(unsafe.SliceData(p))
		return uintptr(q) >= uintptr(b) && uintptr(q)+uintptr(len(p)) <= uintptr(b)+uintptr(cap(buf))
	}
	for _, comp := range []string{"none", "s2", "minlz", "zstd"} {
		c, err := newCodec(DefaultFrameSize, comp, 1, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range [][]byte{osLike(t, 300<<10), randBytes(4, 300<<10)} {
			id := ID{1, 2, 3}
			var bp blobParts
			var work []byte
			st := c.encodeParts(&bp, id, data, &work)
			inWork, inData := 0, 0
			for i, p := range bp.parts {
				switch {
				case within(p, data):
					inData++
				case within(p, work):
					inWork++
				default:
					t.Fatalf("%s: frame %d is neither in the chunk nor in the work buffer", comp, i)
				}
			}
			if inData != st.rawFrames || inWork != st.zstdFrames {
				t.Fatalf("%s: %d frames in the chunk, %d in work; %d raw, %d compressed", comp, inData, inWork, st.rawFrames, st.zstdFrames)
			}
			var blob []byte
			blob = append(blob, bp.head...)
			for _, p := range bp.parts {
				blob = append(blob, p...)
			}
			if len(blob) != bp.size {
				t.Fatalf("%s: parts hold %d bytes, size says %d", comp, len(blob), bp.size)
			}
			if want, _ := c.encode(nil, id, data, &work); !bytes.Equal(blob, want) {
				t.Fatalf("%s: parts differ from encode", comp)
			}
			tbl, err := parseFrameTable(blob, int64(len(blob)))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			fs := DefaultFrameSize
			for i := range tbl.frames {
				f := tbl.frames[i]
				dst := got[i*fs : i*fs+int(tbl.rawFrameLen(i))]
				if err := c.decodeFrame(dst, id, tbl, i, blob[f.off:f.off+int64(f.stored)]); err != nil {
					t.Fatalf("%s: frame %d: %v", comp, i, err)
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("%s: decoded blob differs from the chunk", comp)
			}
			if (comp == "s2" || comp == "minlz") && bytes.Equal(data, osLike(t, 300<<10)) && inWork == 0 {
				t.Fatalf("%s compressed no frame of OS data", comp)
			}
		}
	}
}
