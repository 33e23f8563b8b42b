package chunkstore

import (
	"bytes"
	"context"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
)

// testKDF keeps Argon2id cheap in tests.
func testInit(o InitOptions) InitOptions {
	if o.KDFTime == 0 {
		o.KDFTime = 1
	}
	if o.KDFMemoryKiB == 0 {
		o.KDFMemoryKiB = 1024
	}
	return o
}

// newRepo creates a repository with npools pool directories inside dir.
func newRepo(t testing.TB, npools int, o InitOptions) string {
	t.Helper()
	dir := t.TempDir()
	o.Pools = nil
	for i := range npools {
		o.Pools = append(o.Pools, filepath.Join(dir, "pool"+string(rune('a'+i))))
	}
	if err := Init(dir, testInit(o)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openT(t testing.TB, dir string, o OpenOptions) *Store {
	t.Helper()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint64())
	}
	return b
}

var (
	osMu    sync.Mutex
	osFiles []string // nil until listed
	osNext  int      // next file to append
	osData  []byte
)

// osLike returns n bytes of OS-like data: regular files from /usr in a
// fixed shuffled order (binaries, libraries, text) concatenated, cycled if
// /usr holds less. Tests and benchmarks use it instead of zeros or random
// data, which would flatter or penalize compression and dedup. Files are
// read lazily, only as far as the largest request.
func osLike(t testing.TB, n int) []byte {
	t.Helper()
	osMu.Lock()
	defer osMu.Unlock()
	if osFiles == nil {
		osFiles = []string{}
		for _, root := range []string{"/usr/lib", "/usr/bin", "/usr/share", "/usr/libexec", "/usr/sbin"} {
			filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					osFiles = append(osFiles, p)
				}
				return nil
			})
		}
		sort.Strings(osFiles)
		r := rand.New(rand.NewPCG(1, 2))
		r.Shuffle(len(osFiles), func(i, j int) { osFiles[i], osFiles[j] = osFiles[j], osFiles[i] })
	}
	for len(osData) < n && osNext < len(osFiles) {
		b, err := os.ReadFile(osFiles[osNext])
		osNext++
		if err == nil {
			osData = append(osData, b...)
		}
	}
	if len(osData) == 0 {
		t.Skip("no files under /usr")
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, osData[:min(len(osData), n-len(out))]...)
	}
	return out
}

// ingestAll ingests data and returns its refs.
func ingestAll(t testing.TB, s *Store, data []byte) ([]Ref, Stats) {
	t.Helper()
	var refs []Ref
	st, err := s.Ingest(context.Background(), bytes.NewReader(data), func(r Ref) { refs = append(refs, r) })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return refs, st
}

// verifyRefs reads every chunk back (Get) and compares with data.
func verifyRefs(t testing.TB, s *Store, data []byte, refs []Ref) {
	t.Helper()
	var off int64
	for _, r := range refs {
		if r.Offset != off {
			t.Fatalf("ref at %d, want %d", r.Offset, off)
		}
		got, err := s.Get(context.Background(), r.ID)
		if err != nil {
			t.Fatalf("get %s: %v", r.ID, err)
		}
		if !bytes.Equal(got, data[r.Offset:r.Offset+int64(r.Length)]) {
			t.Fatalf("chunk %s at %d differs", r.ID, r.Offset)
		}
		off += int64(r.Length)
	}
	if off != int64(len(data)) {
		t.Fatalf("refs cover %d bytes, want %d", off, len(data))
	}
}

// listShardFiles returns the shard files of the repository's pools.
func listShardFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && filepath.Base(filepath.Dir(filepath.Dir(p))) == "packs" {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out
}
