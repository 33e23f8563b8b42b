// Package backendtest is the conformance suite for backend.Backend: every
// implementation runs Run from its own tests, so the contract written in
// package backend is checked the same way everywhere (restic's
// internal/backend/test is the model).
//
// The suite pins down the behaviour higher layers are allowed to rely on:
// atomic replace, io.ReaderAt-style short reads with an unwrapped io.EOF,
// ErrNotFound and ErrInvalidName wrapping, prefix listing, and that a failed
// Put (reader error, size mismatch, cancelled context) leaves nothing behind.
package backendtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Run runs the suite. newBackend must return a fresh, empty backend for
// each call; the suite closes it when the subtest ends.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, backend.Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"ReadAtOffsets", testReadAtOffsets},
		{"Empty", testEmpty},
		{"Overwrite", testOverwrite},
		{"Missing", testMissing},
		{"Delete", testDelete},
		{"InvalidNames", testInvalidNames},
		{"ValidNames", testValidNames},
		{"List", testList},
		{"ListStops", testListStops},
		{"Large", testLarge},
		{"Concurrent", testConcurrent},
		{"PutReaderError", testPutReaderError},
		{"PutSizeMismatch", testPutSizeMismatch},
		{"PutCancelled", testPutCancelled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, b)
		})
	}
}

// Data returns n deterministic pseudo-random bytes derived from seed.
func Data(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x766d7661756c74))
	p := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(p[i:], w[:])
	}
	return p
}

// Put stores data under name or fails the test.
func Put(t testing.TB, b backend.Backend, name string, data []byte) {
	t.Helper()
	if err := b.Put(context.Background(), name, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put %s: %v", name, err)
	}
}

// Get reads the whole object via Stat and ReadAt or fails the test.
func Get(t testing.TB, b backend.Backend, name string) []byte {
	t.Helper()
	ctx := context.Background()
	fi, err := b.Stat(ctx, name)
	if err != nil {
		t.Fatalf("Stat %s: %v", name, err)
	}
	p := make([]byte, fi.Size)
	n, err := b.ReadAt(ctx, name, p, 0)
	if err != nil || n != len(p) {
		t.Fatalf("ReadAt %s: n=%d of %d, err=%v", name, n, len(p), err)
	}
	return p
}

// Names lists all objects under prefix, sorted, or fails the test.
func Names(t testing.TB, b backend.Backend, prefix string) []string {
	t.Helper()
	var names []string
	err := b.List(context.Background(), prefix, func(fi backend.ObjectInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	if err != nil {
		t.Fatalf("List %q: %v", prefix, err)
	}
	sort.Strings(names)
	return names
}

func testRoundTrip(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	data := Data(1, 100_000)
	Put(t, b, "pool0/ab/abcdef.shard", data)

	fi, err := b.Stat(ctx, "pool0/ab/abcdef.shard")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "pool0/ab/abcdef.shard" || fi.Size != int64(len(data)) {
		t.Errorf("Stat = %+v, want name pool0/ab/abcdef.shard size %d", fi, len(data))
	}
	if got := Get(t, b, "pool0/ab/abcdef.shard"); !bytes.Equal(got, data) {
		t.Error("read back different bytes")
	}
	var infos []backend.ObjectInfo
	if err := b.List(ctx, "", func(fi backend.ObjectInfo) error { infos = append(infos, fi); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0] != fi {
		t.Errorf("List = %+v, want [%+v]", infos, fi)
	}
	// The caller may reuse its buffer right after Put returns.
	buf := Data(2, 1000)
	Put(t, b, "x", buf)
	want := slices.Clone(buf)
	clear(buf)
	if got := Get(t, b, "x"); !bytes.Equal(got, want) {
		t.Error("Put kept a reference to the caller's buffer")
	}
}

func testReadAtOffsets(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	const size = 10_000
	data := Data(3, size)
	Put(t, b, "obj", data)

	for _, tc := range []struct {
		off    int64
		len    int
		wantN  int
		wantEO bool // want exactly io.EOF
	}{
		{0, size, size, false},
		{0, 1, 1, false},
		{1, 100, 100, false},
		{size - 1, 1, 1, false},
		{4096, 4096, 4096, false},
		{0, 0, 0, false},
		{size, 0, 0, false},
		{size + 5, 0, 0, false},
		{size - 10, 100, 10, true}, // across the end
		{0, size + 1, size, true},
		{size, 1, 0, true}, // at the end
		{size + 100, 10, 0, true},
	} {
		p := make([]byte, tc.len)
		n, err := b.ReadAt(ctx, "obj", p, tc.off)
		if n != tc.wantN {
			t.Errorf("ReadAt(off %d, len %d): n = %d, want %d", tc.off, tc.len, n, tc.wantN)
		}
		if tc.wantEO {
			// Unwrapped, like os.File and bytes.Reader: callers compare
			// with ==.
			if err != io.EOF {
				t.Errorf("ReadAt(off %d, len %d): err = %v, want io.EOF", tc.off, tc.len, err)
			}
		} else if err != nil {
			t.Errorf("ReadAt(off %d, len %d): %v", tc.off, tc.len, err)
		}
		if n > 0 && !bytes.Equal(p[:n], data[tc.off:tc.off+int64(n)]) {
			t.Errorf("ReadAt(off %d, len %d): wrong bytes", tc.off, tc.len)
		}
	}

	// io.ReaderAt's rule: n < len(p) always comes with an error. Check it
	// at every offset near the end.
	for off := int64(size - 20); off <= size+2; off++ {
		p := make([]byte, 16)
		n, err := b.ReadAt(ctx, "obj", p, off)
		if n < len(p) && err == nil {
			t.Errorf("ReadAt(off %d): n = %d < %d with nil error", off, n, len(p))
		}
	}

	if n, err := b.ReadAt(ctx, "obj", make([]byte, 10), -1); err == nil || n != 0 {
		t.Errorf("ReadAt(off -1) = %d, %v; want an error", n, err)
	} else if errors.Is(err, backend.ErrNotFound) || err == io.EOF {
		t.Errorf("ReadAt(off -1) = %v; want a plain error, not not-found or EOF", err)
	}

	// An object works as an io.ReaderAt for the standard library.
	sr := io.NewSectionReader(readerAt{b, "obj"}, 100, 5000)
	got, err := io.ReadAll(sr)
	if err != nil || !bytes.Equal(got, data[100:5100]) {
		t.Errorf("io.SectionReader: %d bytes, %v", len(got), err)
	}
}

type readerAt struct {
	b    backend.Backend
	name string
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	return r.b.ReadAt(context.Background(), r.name, p, off)
}

func testEmpty(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	Put(t, b, "e/empty", nil)
	fi, err := b.Stat(ctx, "e/empty")
	if err != nil || fi.Size != 0 {
		t.Fatalf("Stat = %+v, %v; want size 0", fi, err)
	}
	if n, err := b.ReadAt(ctx, "e/empty", nil, 0); n != 0 || err != nil {
		t.Errorf("ReadAt(empty p) = %d, %v; want 0, nil", n, err)
	}
	if n, err := b.ReadAt(ctx, "e/empty", make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(1 byte) = %d, %v; want 0, io.EOF", n, err)
	}
	if got := Names(t, b, "e/"); !slices.Equal(got, []string{"e/empty"}) {
		t.Errorf("List = %q", got)
	}
}

func testOverwrite(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	first, second := Data(4, 50_000), Data(5, 20_000)
	Put(t, b, "o/x", first)
	// Read first so a backend that caches handles has one to go stale.
	if got := Get(t, b, "o/x"); !bytes.Equal(got, first) {
		t.Fatal("first version differs")
	}
	Put(t, b, "o/x", second)
	if got := Get(t, b, "o/x"); !bytes.Equal(got, second) {
		t.Fatal("read after overwrite gives stale or mixed data")
	}
	p := make([]byte, 30_000)
	n, err := b.ReadAt(ctx, "o/x", p, 0)
	if n != len(second) || err != io.EOF {
		t.Errorf("ReadAt past new end = %d, %v; want %d, io.EOF", n, err, len(second))
	}
	if got := Names(t, b, ""); !slices.Equal(got, []string{"o/x"}) {
		t.Errorf("List after overwrite = %q", got)
	}
	// Overwrite with a larger object as well.
	third := Data(6, 70_000)
	Put(t, b, "o/x", third)
	if got := Get(t, b, "o/x"); !bytes.Equal(got, third) {
		t.Fatal("read after second overwrite differs")
	}
}

func testMissing(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	Put(t, b, "m/present", []byte("here"))
	for _, name := range []string{"m/absent", "absent", "nodir/deeper/absent", "m/present/under-an-object"} {
		if _, err := b.Stat(ctx, name); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrNotFound", name, err)
		}
		if n, err := b.ReadAt(ctx, name, make([]byte, 4), 0); n != 0 || !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("ReadAt(%s) = %d, %v, want ErrNotFound", name, n, err)
		}
		if err := b.Delete(ctx, name); err != nil {
			t.Errorf("Delete(%s) = %v, want nil", name, err)
		}
	}
	// A "directory" holding objects is not an object itself.
	if _, err := b.Stat(ctx, "m"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat(m) = %v, want ErrNotFound", err)
	}
	if err := b.Delete(ctx, "m"); err != nil {
		t.Errorf("Delete(m) = %v", err)
	}
	if got := Get(t, b, "m/present"); string(got) != "here" {
		t.Error("Delete of a prefix touched the object under it")
	}
}

func testDelete(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	Put(t, b, "d/a", Data(7, 100))
	Put(t, b, "d/b", Data(8, 100))
	Get(t, b, "d/a") // warm any handle cache
	if err := b.Delete(ctx, "d/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, "d/a"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat after Delete = %v", err)
	}
	if _, err := b.ReadAt(ctx, "d/a", make([]byte, 1), 0); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("ReadAt after Delete = %v (stale handle?)", err)
	}
	if err := b.Delete(ctx, "d/a"); err != nil {
		t.Errorf("second Delete = %v", err)
	}
	if got := Names(t, b, ""); !slices.Equal(got, []string{"d/b"}) {
		t.Errorf("List after Delete = %q", got)
	}
	// The name can be used again.
	Put(t, b, "d/a", Data(9, 10))
	if got := Get(t, b, "d/a"); !bytes.Equal(got, Data(9, 10)) {
		t.Error("Put after Delete differs")
	}
}

// InvalidNames are rejected by every verb.
var InvalidNames = []string{
	"", "/", "/abs", "/abs/x", "a/", "a//b", ".", "..", "../x", "a/../b", "a/./b", "a/..",
	`a\b`, `..\x`, "a\x00b", "a b", "a:b", "a*b", "ä", "a\nb", "C:x",
	".tmp-1", "a/.tmp-xyz", strings.Repeat("a", backend.MaxSegmentLen+1),
	strings.Repeat("a/", backend.MaxNameLen/2) + "a",
}

func testInvalidNames(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	for _, name := range InvalidNames {
		check := func(verb string, err error) {
			t.Helper()
			if !errors.Is(err, backend.ErrInvalidName) {
				t.Errorf("%s(%q) = %v, want ErrInvalidName", verb, name, err)
			}
		}
		check("Put", b.Put(ctx, name, strings.NewReader("x"), 1))
		_, err := b.ReadAt(ctx, name, make([]byte, 1), 0)
		check("ReadAt", err)
		_, err = b.Stat(ctx, name)
		check("Stat", err)
		check("Delete", b.Delete(ctx, name))
	}
	for _, prefix := range []string{"/", "/a", "a//", "../", "a/../", `a\`, "a b", ".tmp-x/"} {
		err := b.List(ctx, prefix, func(backend.ObjectInfo) error { return nil })
		if !errors.Is(err, backend.ErrInvalidName) {
			t.Errorf("List(%q) = %v, want ErrInvalidName", prefix, err)
		}
	}
	if got := Names(t, b, ""); len(got) != 0 {
		t.Errorf("invalid Puts left objects: %q", got)
	}
}

func testValidNames(t *testing.T, b backend.Backend) {
	names := []string{"a", "A.b-c_d", "x/y/z", "a..b", "..a", "-", "_", ".hidden", "tmp-1", ".tmp",
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.shard",
		strings.Repeat("s", backend.MaxSegmentLen)}
	for i, name := range names {
		Put(t, b, name, Data(uint64(100+i), 10+i))
	}
	for i, name := range names {
		if got := Get(t, b, name); !bytes.Equal(got, Data(uint64(100+i), 10+i)) {
			t.Errorf("%q: wrong content", name)
		}
	}
	want := slices.Clone(names)
	sort.Strings(want)
	if got := Names(t, b, ""); !slices.Equal(got, want) {
		t.Errorf("List = %q\nwant %q", got, want)
	}
}

func testList(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	sizes := map[string]int{
		"p/a/1": 1, "p/a/2": 2, "p/b/1": 3, "p/ab": 4, "p/abc/x/y": 5, "q/x": 6, "q/xy": 7, "top": 8,
	}
	for name, n := range sizes {
		Put(t, b, name, Data(uint64(n), n))
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"p/a/1", "p/a/2", "p/ab", "p/abc/x/y", "p/b/1", "q/x", "q/xy", "top"}},
		{"p", []string{"p/a/1", "p/a/2", "p/ab", "p/abc/x/y", "p/b/1"}},
		{"p/", []string{"p/a/1", "p/a/2", "p/ab", "p/abc/x/y", "p/b/1"}},
		{"p/a", []string{"p/a/1", "p/a/2", "p/ab", "p/abc/x/y"}},
		{"p/a/", []string{"p/a/1", "p/a/2"}},
		{"p/ab", []string{"p/ab", "p/abc/x/y"}},
		{"p/abc/x/", []string{"p/abc/x/y"}},
		{"q/x", []string{"q/x", "q/xy"}},
		{"q/xy", []string{"q/xy"}},
		{"t", []string{"top"}},
		{"top", []string{"top"}},
		{"top/", nil},
		{"zz", nil},
		{"zz/", nil},
		{"no/such/dir/", nil},
	} {
		var got []string
		err := b.List(ctx, tc.prefix, func(fi backend.ObjectInfo) error {
			if want := int64(sizes[fi.Name]); fi.Size != want {
				t.Errorf("List(%q): %s has size %d, want %d", tc.prefix, fi.Name, fi.Size, want)
			}
			got = append(got, fi.Name)
			return nil
		})
		if err != nil {
			t.Errorf("List(%q): %v", tc.prefix, err)
			continue
		}
		sort.Strings(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

func testListStops(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	for i := range 10 {
		Put(t, b, fmt.Sprintf("s/%02d", i), []byte{byte(i)})
	}
	stop := errors.New("enough")
	calls := 0
	err := b.List(ctx, "s/", func(backend.ObjectInfo) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("List = %v, want the callback's error", err)
	}
	if calls != 3 {
		t.Errorf("callback ran %d times after returning an error at 3", calls)
	}
	// The callback may call back into the backend (prune deletes while
	// listing).
	err = b.List(ctx, "s/", func(fi backend.ObjectInfo) error {
		return b.Delete(ctx, fi.Name)
	})
	if err != nil {
		t.Fatalf("List with Delete in callback: %v", err)
	}
	if got := Names(t, b, "s/"); len(got) != 0 {
		t.Errorf("left after deleting while listing: %q", got)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	Put(t, b, "s/again", []byte("x"))
	if err := b.List(cctx, "s/", func(backend.ObjectInfo) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("List with cancelled context = %v, want context.Canceled", err)
	}
}

func testLarge(t *testing.T, b backend.Backend) {
	if testing.Short() {
		t.Skip("40 MiB object; skipped in -short")
	}
	ctx := context.Background()
	const size = 40<<20 + 12345 // not a multiple of any buffer size
	data := Data(10, size)
	// A reader that returns odd-sized pieces, like a network body.
	if err := b.Put(ctx, "big/obj", &oddReader{r: bytes.NewReader(data)}, size); err != nil {
		t.Fatal(err)
	}
	if got := Get(t, b, "big/obj"); !bytes.Equal(got, data) {
		t.Fatal("40 MiB round trip differs")
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		off := r.Int64N(size)
		n := r.IntN(1 << 20)
		p := make([]byte, n)
		got, err := b.ReadAt(ctx, "big/obj", p, off)
		want := min(int64(n), size-off)
		if int64(got) != want || (int64(got) < int64(n)) != (err == io.EOF) || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(off %d, len %d) = %d, %v; want %d", off, n, got, err, want)
		}
		if !bytes.Equal(p[:got], data[off:off+int64(got)]) {
			t.Fatalf("ReadAt(off %d, len %d): wrong bytes", off, n)
		}
	}
}

// oddReader returns at most 7777 bytes per Read.
type oddReader struct{ r io.Reader }

func (o *oddReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 7777)]) }

// versioned returns self-describing content for (name, version): a reader
// can check that it got one whole version and not a mix.
func versioned(name string, version uint64) []byte {
	seed := version*1_000_003 + uint64(len(name))
	for _, c := range name {
		seed = seed*31 + uint64(c)
	}
	n := 1000 + int(seed%50_000)
	p := Data(seed, n)
	binary.LittleEndian.PutUint64(p[:8], version)
	return p
}

func checkVersioned(name string, p []byte) error {
	if len(p) < 8 {
		return fmt.Errorf("%s: only %d bytes", name, len(p))
	}
	v := binary.LittleEndian.Uint64(p[:8])
	if want := versioned(name, v); !bytes.Equal(p, want) {
		return fmt.Errorf("%s: %d bytes are not version %d (%d bytes): torn or mixed", name, len(p), v, len(want))
	}
	return nil
}

func testConcurrent(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	const (
		workers = 16
		rounds  = 25
		shared  = 4 // names every worker overwrites
	)
	for i := range shared {
		name := fmt.Sprintf("c/shared/%d", i)
		Put(t, b, name, versioned(name, 0))
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*4)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for i := range rounds {
				own := fmt.Sprintf("c/w%02d/%03d", w, i)
				data := versioned(own, 1)
				if err := b.Put(ctx, own, bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
					return
				}
				// Read our own back at a random offset.
				off := r.IntN(len(data))
				p := make([]byte, min(4096, len(data)-off))
				if n, err := b.ReadAt(ctx, own, p, int64(off)); err != nil || !bytes.Equal(p[:n], data[off:off+n]) {
					errs <- fmt.Errorf("%s: read own object: n=%d err=%v", own, n, err)
				}
				sh := fmt.Sprintf("c/shared/%d", r.IntN(shared))
				if r.IntN(2) == 0 {
					v := uint64(w*rounds + i + 1)
					d := versioned(sh, v)
					if err := b.Put(ctx, sh, bytes.NewReader(d), int64(len(d))); err != nil {
						errs <- err
					}
					continue
				}
				// A reader of a name being replaced must get one whole
				// version. Size and content can come from different
				// versions (Stat then ReadAt is not atomic), so read a
				// generous buffer in one ReadAt instead.
				p = make([]byte, 64<<10)
				n, err := b.ReadAt(ctx, sh, p, 0)
				if err != io.EOF {
					errs <- fmt.Errorf("%s: ReadAt whole = %d, %v; want io.EOF", sh, n, err)
					continue
				}
				if err := checkVersioned(sh, p[:n]); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := Names(t, b, "c/")
	if len(got) != workers*rounds+shared {
		t.Errorf("List found %d objects, want %d", len(got), workers*rounds+shared)
	}
	for _, name := range got {
		if err := checkVersioned(name, Get(t, b, name)); err != nil {
			t.Error(err)
		}
	}
}

// errReader yields n bytes, then err.
type errReader struct {
	data []byte
	err  error
}

func (e *errReader) Read(p []byte) (int, error) {
	if len(e.data) == 0 {
		return 0, e.err
	}
	n := copy(p, e.data)
	e.data = e.data[n:]
	return n, nil
}

func testPutReaderError(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	boom := errors.New("source went away")
	data := Data(11, 3<<20)
	err := b.Put(ctx, "r/new", &errReader{data: data[:len(data)/2], err: boom}, int64(len(data)))
	if !errors.Is(err, boom) {
		t.Errorf("Put = %v, want it to wrap the reader's error", err)
	}
	if _, err := b.Stat(ctx, "r/new"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat after failed Put = %v, want ErrNotFound", err)
	}
	// A failed replacement keeps the old object.
	old := Data(12, 5000)
	Put(t, b, "r/old", old)
	err = b.Put(ctx, "r/old", &errReader{data: data[:100], err: boom}, int64(len(data)))
	if !errors.Is(err, boom) {
		t.Errorf("Put over existing = %v, want it to wrap the reader's error", err)
	}
	if got := Get(t, b, "r/old"); !bytes.Equal(got, old) {
		t.Error("failed Put damaged the existing object")
	}
	if got := Names(t, b, ""); !slices.Equal(got, []string{"r/old"}) {
		t.Errorf("List after failed Puts = %q, want only r/old (no temp files)", got)
	}
}

func testPutSizeMismatch(t *testing.T, b backend.Backend) {
	ctx := context.Background()
	data := Data(13, 1000)
	if err := b.Put(ctx, "s/short", bytes.NewReader(data), 1001); err == nil {
		t.Error("Put with a reader shorter than size succeeded")
	}
	if err := b.Put(ctx, "s/long", bytes.NewReader(data), 999); err == nil {
		t.Error("Put with a reader longer than size succeeded")
	}
	if err := b.Put(ctx, "s/neg", bytes.NewReader(nil), -1); err == nil {
		t.Error("Put with size -1 succeeded")
	}
	Put(t, b, "s/old", data)
	if err := b.Put(ctx, "s/old", bytes.NewReader(data[:10]), 11); err == nil {
		t.Error("short replacement succeeded")
	}
	if got := Get(t, b, "s/old"); !bytes.Equal(got, data) {
		t.Error("failed replacement damaged the existing object")
	}
	if got := Names(t, b, ""); !slices.Equal(got, []string{"s/old"}) {
		t.Errorf("List after size mismatches = %q, want only s/old", got)
	}
}

func testPutCancelled(t *testing.T, b backend.Backend) {
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := Data(14, 1000)
	if err := b.Put(cctx, "x/cancelled", bytes.NewReader(data), int64(len(data))); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with cancelled context = %v, want context.Canceled", err)
	}
	// Cancelled while the data streams in.
	ctx, cancel2 := context.WithCancel(context.Background())
	big := Data(15, 4<<20)
	r := &cancelAfter{r: bytes.NewReader(big), n: 1 << 20, cancel: cancel2}
	if err := b.Put(ctx, "x/midway", r, int64(len(big))); !errors.Is(err, context.Canceled) {
		t.Errorf("Put cancelled midway = %v, want context.Canceled", err)
	}
	if got := Names(t, b, ""); len(got) != 0 {
		t.Errorf("cancelled Puts left %q", got)
	}
}

// cancelAfter calls cancel once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= n
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}
