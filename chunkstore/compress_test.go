package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

func TestParseCompression(t *testing.T) {
	for _, c := range []struct {
		in     string
		method string
		level  int
		err    string
	}{
		{"zstd", "zstd", DefaultZstdLevel, ""},
		{"ZSTD:3", "zstd", 3, ""},
		{"zstd:-3", "zstd", -3, ""},
		{"s2", "s2", 0, ""},
		{"MinLZ", "minlz", 0, ""},
		{"none", "none", 0, ""},
		{"zstd:0", "", 0, "bad zstd level"},
		{"zstd:-8", "", 0, "bad zstd level"},
		{"zstd:23", "", 0, "bad zstd level"},
		{"zstd:x", "", 0, "bad zstd level"},
		{"s2:1", "", 0, "takes no level"},
		{"minlz:2", "", 0, "takes no level"},
		{"lz4", "", 0, "unknown compression"},
	} {
		m, l, err := ParseCompression(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || m != c.method || l != c.level {
			t.Errorf("%q: %q %d %v, want %q %d", c.in, m, l, err, c.method, c.level)
		}
	}
}

// TestCompressionMethods: every method round-trips OS-like data through a
// repository, compresses it (stored < raw) and records its method in the
// config; an unencrypted and an encrypted repository each.
func TestCompressionMethods(t *testing.T) {
	data := append(osLike(t, 6<<20), randBytes(5, 1<<20)...)
	for _, c := range []struct {
		comp  string
		level int
		enc   bool
	}{
		{CompressionZstd, 1, false}, {CompressionZstd, -3, true}, {CompressionZstd, 3, false},
		{CompressionS2, 0, false}, {CompressionS2, 0, true}, {CompressionNone, 0, false},
		{CompressionMinLZ, 0, false}, {CompressionMinLZ, 0, true},
	} {
		o := InitOptions{Compression: c.comp, ZstdLevel: c.level, PackSize: 2 << 20}
		var pw []byte
		if c.enc {
			pw = []byte("pw")
			o.Password = pw
		}
		dir := newRepo(t, 1, o)
		s := openT(t, dir, OpenOptions{Password: pw})
		if s.cfg.Compression != c.comp || s.cfg.ZstdLevel != c.level {
			t.Fatalf("config %q %d, want %q %d", s.cfg.Compression, s.cfg.ZstdLevel, c.comp, c.level)
		}
		refs, st := ingestAll(t, s, data)
		verifyRefs(t, s, data, refs)
		checkRanges(t, s, data, refs, 50)
		ratio := float64(st.StoredBytes) / float64(st.NewBytes)
		t.Logf("%s:%d enc=%v: stored/raw %.3f", c.comp, c.level, c.enc, ratio)
		if c.comp == CompressionNone {
			if ratio < 1 {
				t.Fatalf("none compressed: %.3f", ratio)
			}
		} else if ratio > 0.9 {
			t.Fatalf("%s did not compress: %.3f", c.comp, ratio)
		}
		s.Close()
	}
	if err := Init(t.TempDir(), testInit(InitOptions{ZstdLevel: 40})); err == nil || !strings.Contains(err.Error(), "bad zstd level 40") {
		t.Fatalf("level 40: %v", err)
	}
}

// TestZstdImplementationsInterop: frames of the compiled-in zstd (C with
// cgo) decode with klauspost's decoder and the other way round, so a
// repository written by a cgo build reads on a build without cgo.
func TestZstdImplementationsInterop(t *testing.T) {
	t.Logf("zstd implementation: %s", zstdImpl)
	data := osLike(t, 64<<10)
	native, err := newZstdCompressor(1, 64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	goEnc, err := newGoZstdCompressor(1, 64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	nativeDec, _ := newZstdDecoder(1)
	goDec, _ := newGoZstdDecoder(1)
	for _, enc := range []frameCompressor{native, goEnc} {
		z := enc.compress(nil, data)
		if len(z) == 0 || len(z) >= len(data) {
			t.Fatalf("%T: compressed to %d", enc, len(z))
		}
		for _, dec := range []zstdDecoder{nativeDec, goDec} {
			out, err := dec.decode(make([]byte, len(data), len(data)+zstdSlack), z)
			if err != nil || !bytes.Equal(out, data) {
				t.Fatalf("%T -> %T: %v", enc, dec, err)
			}
		}
	}
}

// TestZstdFrameCheck: what the C decoder is never given.
func TestZstdFrameCheck(t *testing.T) {
	data := osLike(t, 64<<10)
	enc, _ := newGoZstdCompressor(1, 64<<10, 1)
	z := enc.compress(nil, data)
	if err := checkZstdFrame(z, len(data)); err != nil {
		t.Fatalf("valid frame refused: %v", err)
	}
	two := append(append([]byte{}, z...), z...)
	big, _ := zstd.NewWriter(nil, zstd.WithWindowSize(8<<20), zstd.WithEncoderLevel(zstd.SpeedFastest))
	bigFrame := big.EncodeAll(bytes.Repeat(data, 40), nil)
	for name, c := range map[string]struct {
		b    []byte
		want int
	}{
		"wrong size":  {z, len(data) - 1},
		"two frames":  {two, len(data)},
		"trailing":    {append(append([]byte{}, z...), 0), len(data)},
		"truncated":   {z[:len(z)-1], len(data)},
		"empty":       {nil, 0},
		"big window":  {bigFrame, 40 * len(data)},
		"not zstd":    {bytes.Repeat([]byte{7}, 64), 64},
		"skippable":   {[]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}, 0},
		"reserved bt": {append(append([]byte{}, z[:6]...), 0x07, 0, 0), len(data)},
	} {
		if err := checkZstdFrame(c.b, c.want); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	dec, _ := newZstdDecoder(1)
	if _, err := dec.decode(make([]byte, len(data)), two); err == nil {
		t.Fatal("decoder accepted two frames")
	}
}

// TestBlockDecoders: the s2 and MinLZ block decoders round-trip, refuse a
// destination of another length (checked from the header, before any
// work) and do not turn a damaged block into the original.
func TestBlockDecoders(t *testing.T) {
	data := osLike(t, 64<<10)
	for _, c := range []struct {
		name   string
		encode func([]byte) []byte
		decode func(dst, src []byte) error
	}{
		{"s2", func(b []byte) []byte { return s2.Encode(nil, b) }, s2Decode},
		{"minlz", func(b []byte) []byte { return minlzCompressor{}.compress(nil, b) }, minlzDecode},
	} {
		z := c.encode(data)
		if len(z) == 0 || len(z) >= len(data) {
			t.Fatalf("%s: compressed OS data to %d bytes", c.name, len(z))
		}
		dst := make([]byte, len(data))
		if err := c.decode(dst, z); err != nil || !bytes.Equal(dst, data) {
			t.Fatalf("%s: round trip: %v", c.name, err)
		}
		for _, n := range []int{len(data) - 1, len(data) + 1} {
			if err := c.decode(make([]byte, n), z); !errors.Is(err, errBlockLength) {
				t.Fatalf("%s: dst of %d bytes: %v", c.name, n, err)
			}
		}
		// A block whose header claims more than dst holds is refused
		// before the decoder could allocate for it.
		small := make([]byte, len(data)/2)
		if a := testing.AllocsPerRun(10, func() { c.decode(small, z) }); a != 0 {
			t.Fatalf("%s: a block longer than dst cost %v allocations", c.name, a)
		}
		bad := append([]byte{}, z...)
		bad[len(bad)/2] ^= 0xff
		if err := c.decode(dst, bad); err == nil && bytes.Equal(dst, data) {
			t.Fatalf("%s: corrupt block decoded to the original", c.name)
		}
		if err := c.decode(dst, z[:len(z)/2]); err == nil {
			t.Fatalf("%s: truncated block decoded", c.name)
		}
	}
	_ = context.Background
}

// TestFrameCRCBindsID: an unencrypted frame read for another chunk ID fails
// its CRC (the whole-chunk BLAKE3 check is skipped for such blobs), and a
// blob written before the CRC covered the ID (flag bit2 clear) still reads,
// checked by BLAKE3 instead.
func TestFrameCRCBindsID(t *testing.T) {
	s := openT(t, newRepo(t, 1, InitOptions{}), OpenOptions{})
	defer s.Close()
	data := osLike(t, 3*DefaultFrameSize+100)
	id := s.ChunkID(data)
	var w []byte
	blob, _ := s.codec.encode(nil, id, data, &w)
	if blob[1] != flagCRC|flagCRCID {
		t.Fatalf("flags %#x", blob[1])
	}
	if got, err := s.decodeBlob(id, blob, int64(len(blob))); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("decode: %v", err)
	}
	other := id
	other[0] ^= 1
	if _, err := s.decodeBlob(other, blob, int64(len(blob))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("frame of %s read as %s: %v", id, other, err)
	}

	// Legacy blob: raw frames, CRC of the plaintext only.
	const fs = 4096
	small := data[:2*fs+10]
	legacy := []byte{blobVersion, flagCRC, 12}
	legacy = binary.AppendUvarint(legacy, uint64(len(small)))
	for i := 0; i < len(small); i += fs {
		f := small[i:min(len(small), i+fs)]
		legacy = binary.AppendUvarint(legacy, uint64(len(f)))
		legacy = append(legacy, methodRaw)
		legacy = binary.LittleEndian.AppendUint32(legacy, crc32c(f))
	}
	legacy = append(legacy, small...)
	sid := s.ChunkID(small)
	if got, err := s.decodeBlob(sid, legacy, int64(len(legacy))); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("legacy decode: %v", err)
	}
	sid[5] ^= 1
	if _, err := s.decodeBlob(sid, legacy, int64(len(legacy))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("legacy blob under a wrong ID: %v", err)
	}
}
