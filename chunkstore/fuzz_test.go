package chunkstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// seedBlobs returns valid blobs (unencrypted and sealed) for the fuzz seeds.
func seedBlobs(t testing.TB) [][]byte {
	aead, err := newGCM(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for i, a := range []bool{false, true, false, true, false, true} {
		comp := []string{CompressionZstd, CompressionS2, CompressionMinLZ}[i/2]
		c, err := newCodec(4096, comp, 1, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		if a {
			c.aead = aead
		}
		for _, d := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("abc"), 5000), randBytes(1, 9000)} {
			var w []byte
			blob, _ := c.encode(nil, ID{1}, d, &w)
			out = append(out, blob)
		}
		c.close()
	}
	return out
}

// seedPacks returns valid sealed packs (plain and encrypted trailers).
func seedPacks(t testing.TB) [][]byte {
	aead, _ := newGCM(bytes.Repeat([]byte{7}, 32))
	var out [][]byte
	for _, a := range []bool{false, true} {
		for n := range 3 {
			p := newPackBuilder(1<<16, a)
			for i := range n {
				p.add(ID{byte(i)}, 100, [][]byte{bytes.Repeat([]byte{byte(i)}, 50+i)})
			}
			if a {
				out = append(out, p.seal(aead))
			} else {
				out = append(out, p.seal(nil))
			}
		}
	}
	return out
}

// FuzzFrameTable: the chunk frame table parser (and the frame decoder
// behind it) must return an error, never panic, hang or allocate wildly.
func FuzzFrameTable(f *testing.F) {
	for _, b := range seedBlobs(f) {
		f.Add(b, int64(len(b)))
	}
	c, err := newCodec(4096, CompressionNone, 0, nil, 1)
	if err != nil {
		f.Fatal(err)
	}
	aead, _ := newGCM(bytes.Repeat([]byte{7}, 32))
	sc, _ := newCodec(4096, CompressionNone, 0, aead, 1)
	f.Fuzz(func(t *testing.T, head []byte, stored int64) {
		ft, err := parseFrameTable(head, stored)
		if err != nil {
			return
		}
		if stored >= 0 && ft.storedLen() != stored {
			t.Fatalf("table describes %d bytes, told %d", ft.storedLen(), stored)
		}
		if ft.storedLen() != int64(len(head)) {
			return
		}
		// A complete blob: decode every frame; errors are fine.
		cc := c
		if ft.sealed {
			cc = sc
		}
		for i, fe := range ft.frames {
			if fe.off < int64(ft.hdrLen) || fe.off+int64(fe.stored) > int64(len(head)) {
				t.Fatalf("frame %d out of bounds", i)
			}
			dst := make([]byte, ft.rawFrameLen(i))
			cc.decodeFrame(dst, ID{1}, ft, i, head[fe.off:fe.off+int64(fe.stored)])
		}
	})
}

// FuzzPackTrailer: footer + trailer parsing of a pack's tail.
func FuzzPackTrailer(f *testing.F) {
	for _, p := range seedPacks(f) {
		f.Add(p)
	}
	aead, _ := newGCM(bytes.Repeat([]byte{7}, 32))
	f.Fuzz(func(t *testing.T, pack []byte) {
		if len(pack) < packFooterLen {
			return
		}
		pl := int64(len(pack))
		tl, _, err := parseFooter(pack[pl-packFooterLen:], pl)
		if err != nil {
			return
		}
		toff := pl - packFooterLen - int64(tl)
		region := pack[toff : pl-packFooterLen]
		// Use the region's real CRC so the fuzzer gets past the checksum.
		for _, a := range []bool{false, true} {
			var es []packEntry
			if a {
				es, err = parseTrailer(region, crc32c(region), PackID{}, toff, aead)
			} else {
				es, err = parseTrailer(region, crc32c(region), PackID{}, toff, nil)
			}
			if err != nil {
				continue
			}
			next := uint64(packHeaderLen)
			for _, e := range es {
				if e.Offset < next || e.Offset+uint64(e.Stored) > uint64(toff) {
					t.Fatalf("entry %+v out of bounds", e)
				}
				next = e.Offset + uint64(e.Stored)
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed seed corpus in
// testdata/fuzz when VMVAULT_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VMVAULT_WRITE_SEEDS") != "1" {
		t.Skip("set VMVAULT_WRITE_SEEDS=1 to regenerate testdata/fuzz seeds")
	}
	write := func(name string, i int, vals ...any) {
		dir := filepath.Join("testdata", "fuzz", name)
		os.MkdirAll(dir, 0o755)
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, v := range vals {
			switch v := v.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", v)
			case int64:
				fmt.Fprintf(&b, "int64(%d)\n", v)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%02d", i)), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, blob := range seedBlobs(t) {
		write("FuzzFrameTable", i, blob, int64(len(blob)))
	}
	for i, p := range seedPacks(t) {
		write("FuzzPackTrailer", i, p)
	}
}
