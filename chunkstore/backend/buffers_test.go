package backend

import (
	"bytes"
	"io"
	"testing"
)

// TestBuffers: Buffers reads as the concatenation of its slices through
// Read (any buffer size) and WriteTo, reports what is unread, and Take
// hands over exactly the unread slices.
func TestBuffers(t *testing.T) {
	parts := [][]byte{[]byte("head"), {}, []byte("-table-"), bytes.Repeat([]byte{7}, 10000)}
	want := bytes.Join(parts, nil)
	for _, bs := range []int{1, 3, 4096, 20000} {
		b := NewBuffers(parts...)
		if b.Len() != int64(len(want)) {
			t.Fatalf("Len %d, want %d", b.Len(), len(want))
		}
		var got []byte
		p := make([]byte, bs)
		for {
			n, err := b.Read(p)
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil || n == 0 {
				t.Fatalf("read: %d, %v", n, err)
			}
		}
		if !bytes.Equal(got, want) || b.Len() != 0 {
			t.Fatalf("buffer %d: read %q..., Len after %d", bs, got[:min(10, len(got))], b.Len())
		}
	}
	b := NewBuffers(parts...)
	p := make([]byte, 6)
	b.Read(p) // "head-t"
	var w bytes.Buffer
	if n, err := b.WriteTo(&w); err != nil || n != int64(len(want)-6) || !bytes.Equal(w.Bytes(), want[6:]) {
		t.Fatalf("WriteTo after a partial Read: %d, %v", n, err)
	}
	b = NewBuffers(parts...)
	b.Read(p)
	rest := b.Take()
	if !bytes.Equal(bytes.Join(rest, nil), want[6:]) || b.Len() != 0 {
		t.Fatal("Take did not return exactly the unread bytes")
	}
}
