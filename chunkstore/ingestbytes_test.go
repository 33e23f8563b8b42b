package chunkstore

import (
	"bytes"
	"context"
	"testing"
)

// TestIngestBytes: in-place chunking cuts where Ingest cuts, stores the
// same chunks, and the caller's buffer is free when it returns (scribbling
// over it changes nothing stored).
func TestIngestBytes(t *testing.T) {
	s := openT(t, newRepo(t, 1, InitOptions{PackSize: 1 << 20}), OpenOptions{})
	defer s.Close()
	data := append(osLike(t, 5<<20), randBytes(9, 3<<20)...)
	want, _ := ingestAll(t, s, data)
	ctx := context.Background()
	buf := bytes.Clone(data)
	var got []Ref
	st, err := s.IngestBytes(ctx, buf, func(r Ref) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || st.NewChunks != 0 || st.BytesIn != int64(len(data)) {
		t.Fatalf("%d refs (want %d), stats %+v", len(got), len(want), st)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("ref %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// New data through IngestBytes, then the buffer is overwritten.
	fresh := randBytes(77, 2<<20)
	keep := bytes.Clone(fresh)
	var refs []Ref
	if _, err := s.IngestBytes(ctx, fresh, func(r Ref) { refs = append(refs, r) }); err != nil {
		t.Fatal(err)
	}
	clear(fresh)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	verifyRefs(t, s, keep, refs)
	if _, err := s.IngestBytes(ctx, nil, nil); err != nil {
		t.Fatalf("empty: %v", err)
	}
}
