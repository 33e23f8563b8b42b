//go:build linux

package chunkstore

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/restic/chunker"
)

// usrLibData returns n bytes of shared libraries and other files from
// /usr/lib/x86_64-linux-gnu concatenated in path order (cycled if short):
// the kind of data a VM backup chunks, where byte values are far from
// uniform (runs of zeros, code, symbol tables), unlike random input.
func usrLibData(b testing.TB, n int) []byte {
	var paths []string
	filepath.WalkDir("/usr/lib/x86_64-linux-gnu", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Strings(paths)
	var all []byte
	for _, p := range paths {
		if len(all) >= n {
			break
		}
		if f, err := os.ReadFile(p); err == nil {
			all = append(all, f...)
		}
	}
	if len(all) == 0 {
		return osLike(b, n)
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, all[:min(len(all), n-len(out))]...)
	}
	return out
}

// BenchmarkCDCScan chunks VMVAULT_BENCH_MB (default 256) of
// /usr/lib/x86_64-linux-gnu with the default chunk sizes and a fixed
// degree-53 polynomial (as chunker.RandomPolynomial makes), with the scalar
// scan and, where the CPU has it, the vector filter (cdc_vec.go). The
// machine is noisy: compare them interleaved, e.g.
//
//	go test -c -o /tmp/cs.test ./chunkstore
//	for i in 1 2 3 4 5 6; do for v in scalar vector; do
//		/tmp/cs.test -test.run '^$' -test.bench "CDCScan/$v\$" -test.benchtime 4x
//	done; done
func BenchmarkCDCScan(b *testing.B) {
	data := usrLibData(b, benchMB()<<20)
	pol, err := chunker.DerivePolynomial(rand.NewChaCha8([32]byte{53}))
	if err != nil {
		b.Fatal(err)
	}
	counts := map[string]int{}
	for _, vec := range []bool{false, true} {
		name := "scalar"
		if vec {
			name = "vector"
			if !haveGFNI {
				continue // nothing to compare on this CPU
			}
		}
		useVectorCDC = vec
		c := newCDC(pol, DefaultChunkMin, DefaultChunkMax, DefaultChunkAvg)
		useVectorCDC = haveGFNI
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			c0 := cpuTime()
			for b.Loop() {
				var st cdcState
				n := 0
				for start := 0; start < len(data); n++ {
					start += c.next(data[start:], &st, true)
				}
				counts[name] = n
			}
			reportCPU(b, cpuTime()-c0, int64(len(data))*int64(b.N))
		})
	}
	if n, m := counts["scalar"], counts["vector"]; n != 0 && m != 0 && n != m {
		b.Fatalf("the vector scan made %d chunks, the scalar one %d", m, n)
	}
}
