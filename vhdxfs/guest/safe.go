package guest

import (
	"fmt"
	"io"
	"runtime/debug"
)

// protect runs fn and turns a panic inside it (a parser indexing past a
// slice, a nil map from a corrupt record...) into an error, so that one bad
// guest image cannot take down the server that mounts it.
func protect(kind, name string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("guest: %s: internal error reading %q: %v: %w", kind, name, r, ErrCorrupt)
			if debugPanics {
				err = fmt.Errorf("%w\n%s", err, debug.Stack())
			}
		}
	}()
	return fn()
}

// debugPanics adds stack traces to recovered panics (tests flip it on).
var debugPanics = false

// safeFile guards a backend File: bounds the offsets, normalises io.EOF and
// recovers from panics inside third-party readers.
type safeFile struct {
	f    File
	kind string
	name string
}

func (s *safeFile) Size() int64  { return s.f.Size() }
func (s *safeFile) Close() error { return s.f.Close() }

func (s *safeFile) ReadAt(p []byte, off int64) (n int, err error) {
	if off < 0 {
		return 0, fmt.Errorf("guest: %s: read %q at negative offset %d", s.kind, s.name, off)
	}
	size := s.f.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := p
	if int64(len(want)) > size-off {
		want = want[:size-off]
	}
	err = protect(s.kind, s.name, func() error {
		var err error
		n, err = s.f.ReadAt(want, off)
		return err
	})
	if n > len(want) {
		n = len(want)
	}
	if err == io.EOF && n == len(want) {
		err = nil
	}
	if n < len(want) && (err == nil || err == io.EOF) {
		// The file claims more bytes than its data runs deliver: a
		// truncated or damaged image, not the end of the file.
		err = fmt.Errorf("guest: %s: short read of %q at %d: %w", s.kind, s.name, off+int64(n), io.ErrUnexpectedEOF)
	}
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}
