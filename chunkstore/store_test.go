package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRoundTrip: random and OS-like data in, the same bytes out (Get of
// every chunk, GetRange of random ranges), across chunk sizes, K+M and
// encryption, before and after reopening the repository.
func TestRoundTrip(t *testing.T) {
	type tc struct {
		k, m, pools   int
		min, avg, max int
		enc           bool
	}
	cases := []tc{
		{1, 0, 1, 512 << 10, 1 << 20, 8 << 20, false},
		{4, 2, 3, 64 << 10, 128 << 10, 512 << 10, true},
		{8, 2, 10, 512 << 10, 1 << 20, 8 << 20, true},
		{10, 4, 4, 128 << 10, 256 << 10, 1 << 20, false},
		{8, 2, 2, 32 << 10, 64 << 10, 256 << 10, true},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("K%d_M%d_avg%dK_enc%v", c.k, c.m, c.avg>>10, c.enc), func(t *testing.T) {
			o := InitOptions{DataShards: c.k, ParityShards: c.m, NoParity: c.m == 0,
				ChunkMin: c.min, ChunkAvg: c.avg, ChunkMax: c.max, PackSize: 4 << 20}
			var pw []byte
			if c.enc {
				pw = []byte("secret")
				o.Password = pw
			}
			dir := newRepo(t, c.pools, o)
			s := openT(t, dir, OpenOptions{Password: pw})
			data := append(randBytes(uint64(c.avg), 6<<20), osLike(t, 14<<20)...)
			refs, st := ingestAll(t, s, data)
			if st.BytesIn != int64(len(data)) || st.Chunks != int64(len(refs)) {
				t.Fatalf("stats %+v for %d bytes, %d refs", st, len(data), len(refs))
			}
			t.Logf("%d chunks, stored %d of %d bytes", len(refs), st.StoredBytes, st.NewBytes)
			verifyRefs(t, s, data, refs)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openT(t, dir, OpenOptions{Password: pw})
			defer s.Close()
			verifyRefs(t, s, data, refs)
			checkRanges(t, s, data, refs, 200)
			rep, err := s.Check(context.Background(), true)
			if err != nil || !rep.OK() {
				t.Fatalf("check: %v %s", err, rep)
			}
			// Shards are spread: pool i holds shards i, i+pools, ...
			for _, f := range listShardFiles(t, dir) {
				var idx int
				fmt.Sscanf(f[strings.LastIndexByte(f, '.')+1:], "%d", &idx)
				pool := filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(f))))
				if want := "pool" + string(rune('a'+idx%c.pools)); pool != want {
					t.Fatalf("shard %s in %s, want %s", f, pool, want)
				}
			}
		})
	}
}

// checkRanges compares n random GetRange reads (4 KiB mostly, some across
// frame boundaries and chunk ends) with data.
func checkRanges(t *testing.T, s *Store, data []byte, refs []Ref, n int) {
	t.Helper()
	r := rand.New(rand.NewPCG(7, 8))
	for range n {
		ref := refs[r.IntN(len(refs))]
		ln := 4096
		if r.IntN(4) == 0 {
			ln = 1 + r.IntN(200<<10)
		}
		off := r.Int64N(int64(ref.Length))
		p := make([]byte, ln)
		got, err := s.GetRange(context.Background(), ref.ID, off, p)
		if err != nil {
			t.Fatal(err)
		}
		want := data[ref.Offset+off : ref.Offset+min(off+int64(ln), int64(ref.Length))]
		if got != len(want) || !bytes.Equal(p[:got], want) {
			t.Fatalf("range %d+%d of chunk %s: got %d bytes, want %d", off, ln, ref.ID, got, len(want))
		}
	}
}

// TestPendingReadAndPut: chunks are readable before Flush; Put verifies the
// ID; Has is batched and sees pending and stored chunks.
func TestPendingReadAndPut(t *testing.T) {
	dir := newRepo(t, 1, InitOptions{DataShards: 2, ParityShards: 1, Password: []byte("pw")})
	s := openT(t, dir, OpenOptions{Password: []byte("pw")})
	defer s.Close()
	ctx := context.Background()
	a, b := randBytes(1, 300<<10), osLike(t, 200<<10)
	ida, isNew, err := s.Put(ctx, ID{}, a)
	if err != nil || !isNew {
		t.Fatal(err, isNew)
	}
	if _, _, err := s.Put(ctx, ida, b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("put with wrong ID: %v", err)
	}
	got, err := s.Get(ctx, ida) // pending, not flushed
	if err != nil || !bytes.Equal(got, a) {
		t.Fatalf("pending get: %v", err)
	}
	idb := s.ChunkID(b)
	has, err := s.Has(ctx, []ID{ida, idb})
	if err != nil || !has[0] || has[1] {
		t.Fatalf("has = %v, %v", has, err)
	}
	if _, isNew, _ := s.Put(ctx, ida, a); isNew {
		t.Fatal("second put stored again")
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = s.Get(ctx, ida)
	if err != nil || !bytes.Equal(got, a) {
		t.Fatalf("get: %v", err)
	}
	if _, err := s.Get(ctx, idb); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	// Ingester splits the stream arbitrarily; refs are the same as Ingest.
	data := osLike(t, 5<<20)
	var r1, r2 []Ref
	if _, err := s.Ingest(ctx, bytes.NewReader(data), func(r Ref) { r1 = append(r1, r) }); err != nil {
		t.Fatal(err)
	}
	in := s.NewIngester(ctx, func(r Ref) { r2 = append(r2, r) })
	for p := data; len(p) > 0; {
		n := min(len(p), 1+len(p)%70001)
		in.Write(p[:n])
		p = p[n:]
	}
	st, err := in.Close()
	if err != nil || st.NewChunks != 0 || fmt.Sprint(r1) != fmt.Sprint(r2) {
		t.Fatalf("ingester: %v, %+v, refs equal %v", err, st, fmt.Sprint(r1) == fmt.Sprint(r2))
	}
}

func TestWrongPasswordAndVersion(t *testing.T) {
	dir := newRepo(t, 1, InitOptions{Password: []byte("right")})
	if _, err := Open(dir, OpenOptions{Password: []byte("wrong")}); !errors.Is(err, ErrWrongPassword) || err.Error() != "chunkstore: wrong password" {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := Open(dir, OpenOptions{}); !errors.Is(err, ErrPasswordRequired) {
		t.Fatalf("no password: %v", err)
	}
	s := openT(t, dir, OpenOptions{Password: []byte("right")})
	id, _, err := s.Put(context.Background(), ID{}, []byte("hello world"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, OpenOptions{Password: []byte("right")}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
	s.Close()
	if err := ChangePassword(dir, []byte("wrong"), []byte("new")); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("change with wrong password: %v", err)
	}
	if err := ChangePassword(dir, []byte("right"), []byte("new")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, OpenOptions{Password: []byte("right")}); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("old password after change: %v", err)
	}
	s = openT(t, dir, OpenOptions{Password: []byte("new")})
	if got, err := s.Get(context.Background(), id); err != nil || string(got) != "hello world" {
		t.Fatalf("get after password change: %q %v", got, err)
	}
	s.Close()
	fi, err := os.Stat(filepath.Join(dir, "config"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config mode: %v %v", fi.Mode(), err)
	}

	b, _ := os.ReadFile(filepath.Join(dir, "config"))
	b = bytes.Replace(b, []byte(`"version": 1`), []byte(`"version": 7`), 1)
	os.WriteFile(filepath.Join(dir, "config"), b, 0o600)
	_, err = Open(dir, OpenOptions{Password: []byte("new")})
	if err == nil || err.Error() != "chunkstore: repository format version 7 not supported (this build reads 1)" {
		t.Fatalf("unknown version: %v", err)
	}
	if err := Init(dir, testInit(InitOptions{})); err == nil {
		t.Fatal("init over an existing repository succeeded")
	}
}

// TestSingleFlight: concurrent readers of the same cold chunk decode each
// frame once; a cached frame is not decoded again.
func TestSingleFlight(t *testing.T) {
	dir := newRepo(t, 1, InitOptions{DataShards: 1, NoParity: true, ChunkMin: 1 << 20, ChunkAvg: 2 << 20, ChunkMax: 4 << 20})
	s := openT(t, dir, OpenOptions{})
	defer s.Close()
	data := osLike(t, 8<<20)
	refs, _ := ingestAll(t, s, data)
	ref := refs[0]
	nf := numFrames(int64(ref.Length), s.cfg.FrameSize)
	ctx := context.Background()
	before := s.codec.decoded.Load()
	// The leader is held in loadFrames until the others queued behind it:
	// readers that come after it finished are not concurrent, and a read
	// that covers whole frames does not cache them (bulk reads must not
	// evict the random-access working set).
	testHookLoadFrames = func() { time.Sleep(300 * time.Millisecond) }
	defer func() { testHookLoadFrames = func() {} }()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, ref.Length)
			if n, err := s.GetRange(ctx, ref.ID, 0, p); err != nil || n != ref.Length || !bytes.Equal(p, data[:ref.Length]) {
				t.Errorf("reader %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if got := s.codec.decoded.Load() - before; got != int64(nf) {
		t.Fatalf("16 concurrent readers decoded %d frames, chunk has %d", got, nf)
	}
	// Frames a read covers entirely are decoded in place, not cached (bulk
	// reads must not evict the random-access working set); a partly read
	// frame is cached, and the next small read of it decodes nothing.
	p := make([]byte, 4096)
	for i := range 2 {
		if _, err := s.GetRange(ctx, ref.ID, 70000+int64(i)*100, p); err != nil {
			t.Fatal(err)
		}
		if got := s.codec.decoded.Load() - before; got != int64(nf)+1 {
			t.Fatalf("small read %d: %d decodes, want %d", i, got, nf+1)
		}
	}
	// Whole-chunk Gets of another chunk, concurrently: each frame once. The
	// leader is held in loadFrames until the others queued behind it.
	ref = refs[1]
	nf = numFrames(int64(ref.Length), s.cfg.FrameSize)
	before = s.codec.decoded.Load()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := s.Get(ctx, ref.ID); err != nil || !bytes.Equal(got, data[ref.Offset:ref.Offset+int64(ref.Length)]) {
				t.Errorf("get: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := s.codec.decoded.Load() - before; got != int64(nf) {
		t.Fatalf("8 concurrent Gets decoded %d frames, chunk has %d", got, nf)
	}
}

// cancelReader cancels its context once more than after bytes were read.
type cancelReader struct {
	r      *bytes.Reader
	after  int
	cancel context.CancelFunc
	n      int
}

func (c *cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	if c.n > c.after {
		c.cancel()
	}
	return n, err
}

// TestIngestCancel: a cancelled ingest returns the context's error, and the
// store stays usable (what was appended is flushed normally).
func TestIngestCancel(t *testing.T) {
	dir := newRepo(t, 1, InitOptions{DataShards: 2, ParityShards: 1})
	s := openT(t, dir, OpenOptions{})
	defer s.Close()
	data := osLike(t, 32<<20)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := s.Ingest(ctx, &cancelReader{r: bytes.NewReader(data), after: 8 << 20, cancel: cancel}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ingest: %v", err)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	refs, _ := ingestAll(t, s, data)
	verifyRefs(t, s, data, refs)
	if rep, err := s.Check(context.Background(), false); err != nil || !rep.OK() {
		t.Fatalf("check: %v %s", err, rep)
	}
}
