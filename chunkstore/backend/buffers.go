package backend

import (
	"io"
	"unsafe"
)

// DirectAlign is the memory, offset and length alignment of direct
// (O_DIRECT) I/O that every device accepts.
const DirectAlign = 4096

// AlignedBuffer returns a zeroed n-byte buffer at a DirectAlign-aligned
// address. Shard data in such memory can be written with O_DIRECT without a
// copy (backend/local); pack, padding and parity buffers are allocated with
// it.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+DirectAlign)
	skip := int(-uintptr(unsafe.Pointer(&b[0])) & (DirectAlign - 1))
	return b[skip : skip+n : skip+n]
}

// Buffers is an io.Reader over byte slices read in order, like an
// io.MultiReader of bytes.Readers, that a backend may also take as the
// slices themselves: backend/local writes the memory-aligned ones with
// O_DIRECT straight from the caller's memory (a shard's data is a slice of
// the pack buffer), instead of copying every byte through a buffer. Give
// Put a *Buffers when the bytes are in memory anyway.
type Buffers struct {
	bufs [][]byte
}

// NewBuffers returns a reader of the concatenation of bufs. The bytes are
// not copied (they must not change until Put returns); the list is, so
// reading never changes the caller's bufs.
func NewBuffers(bufs ...[]byte) *Buffers { return &Buffers{bufs: append([][]byte(nil), bufs...)} }

// Read implements io.Reader.
func (b *Buffers) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && len(b.bufs) > 0 {
		c := copy(p[n:], b.bufs[0])
		n += c
		if b.bufs[0] = b.bufs[0][c:]; len(b.bufs[0]) == 0 {
			b.bufs = b.bufs[1:]
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// WriteTo implements io.WriterTo: each slice goes to w in one Write.
func (b *Buffers) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for len(b.bufs) > 0 {
		m, err := w.Write(b.bufs[0])
		n += int64(m)
		if b.bufs[0] = b.bufs[0][m:]; len(b.bufs[0]) == 0 {
			b.bufs = b.bufs[1:]
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Len is the number of unread bytes.
func (b *Buffers) Len() int64 {
	var n int64
	for _, s := range b.bufs {
		n += int64(len(s))
	}
	return n
}

// Take returns the unread slices and leaves the reader empty.
func (b *Buffers) Take() [][]byte {
	s := b.bufs
	b.bufs = nil
	return s
}
