// Package backend is the object-storage seam under chunkstore: a handful of
// verbs on named, immutable objects. A local directory implements it today
// (backend/local); an S3-compatible store can follow without chunkstore
// changing (see README.md in this directory). backend/mem and backend/fault
// let higher layers test without disks, and backend/backendtest is the
// conformance suite every implementation must pass.
//
// Names are slash-separated relative paths ("pool0/ab/abcd....shard") made of
// [A-Za-z0-9._-] segments; implementations reject anything else with an
// error wrapping ErrInvalidName (see ValidateName). The rules are the
// intersection of what every target can store without escaping or surprises:
// no "..", no absolute paths, no empty segments, no backslashes or NUL, and
// segments starting with ".tmp-" are reserved for implementations' temporary
// files. A name is a plain string, not a directory path: on an object store
// "a" and "a/b" can both exist, on a filesystem they cannot, so callers must
// not use one object's name as a directory of another.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrNotFound is returned (wrapped) when an object does not exist.
var ErrNotFound = errors.New("backend: object not found")

// ErrInvalidName is returned (wrapped) for a name or prefix that breaks the
// naming rules in the package comment.
var ErrInvalidName = errors.New("backend: invalid object name")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name string
	Size int64
}

// Backend stores immutable objects. Implementations are safe for concurrent
// use by many goroutines.
type Backend interface {
	// Put stores size bytes from r under name atomically and durably: when
	// Put returns nil, the whole object is visible and survives a crash;
	// when it fails or the process dies, no partial object is visible under
	// name. Putting an existing name replaces it atomically (a failed
	// replacement leaves the old object intact). r must yield exactly size
	// bytes: fewer, more, or a read error fail the Put. Put reads r only
	// until it returns.
	Put(ctx context.Context, name string, r io.Reader, size int64) error

	// ReadAt reads len(p) bytes of object name from offset off, with the
	// semantics of os.File.ReadAt and bytes.Reader.ReadAt: n < len(p) always
	// comes with a non-nil error; reading across or past the end returns the
	// bytes available and io.EOF itself (unwrapped, so io.SectionReader and
	// friends work); a negative off is an error. A missing object gives an
	// error wrapping ErrNotFound. Callers that need exactly len(p) bytes
	// (a shard range whose length the index knows) treat any short read as
	// corruption.
	ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error)

	// Stat returns the object's size, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn for every object whose name starts with prefix (a plain
	// string prefix, not only at "/" boundaries), in no particular order.
	// Returning an error from fn stops the listing and List returns that
	// error. Objects put or deleted while List runs may or may not be seen.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object; deleting a missing object is not an error.
	Delete(ctx context.Context, name string) error

	// Close releases resources.
	Close() error
}

// Prefetcher is implemented by backends that can start fetching a range of
// an object before it is read (local: the kernel's read-ahead into the page
// cache). A restore reads its chunks in a known order; prefetching the next
// tens of megabytes keeps the disk busy while the CPU decodes. Prefetch is a
// hint: it does not wait for the data and reports no errors.
type Prefetcher interface {
	Prefetch(ctx context.Context, name string, off, n int64)
}

// ReservedPrefix starts the names of implementations' temporary files
// (e.g. backend/local's ".tmp-<random>"). No segment of a valid name may
// start with it, so a temp file can never be mistaken for an object.
const ReservedPrefix = ".tmp-"

// Limits on names. 255 bytes is the segment limit of ext4, XFS, NTFS and
// APFS; 1024 bytes is S3's key limit.
const (
	MaxSegmentLen = 255
	MaxNameLen    = 1024
)

// ValidateName reports whether name follows the naming rules in the package
// comment. The error wraps ErrInvalidName.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidName, len(name), MaxNameLen)
	}
	for _, seg := range strings.Split(name, "/") {
		if err := validSegment(seg); err != nil {
			return fmt.Errorf("%w %q: %s", ErrInvalidName, name, err)
		}
	}
	return nil
}

// ValidatePrefix reports whether prefix can be given to List: "" (everything)
// or a string made of valid segments where the last one may be partial or
// empty ("pool0/", "pool0/ab", "pool0/a"). The error wraps ErrInvalidName.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if len(prefix) > MaxNameLen {
		return fmt.Errorf("%w: prefix of %d bytes, more than %d", ErrInvalidName, len(prefix), MaxNameLen)
	}
	segs := strings.Split(prefix, "/")
	for i, seg := range segs {
		if i == len(segs)-1 {
			// The partial last segment only needs valid characters: ".."
			// is a fine prefix of the segment "..x".
			if c, ok := badChar(seg); ok {
				return fmt.Errorf("%w: prefix %q: character %q", ErrInvalidName, prefix, c)
			}
			break
		}
		if err := validSegment(seg); err != nil {
			return fmt.Errorf("%w: prefix %q: %s", ErrInvalidName, prefix, err)
		}
	}
	return nil
}

// validSegment returns a reason (not an error chain) why seg is not a valid
// name segment, or nil.
func validSegment(seg string) error {
	switch {
	case seg == "":
		return errors.New("empty segment")
	case seg == "." || seg == "..":
		return fmt.Errorf("segment %q", seg)
	case len(seg) > MaxSegmentLen:
		return fmt.Errorf("segment of %d bytes, more than %d", len(seg), MaxSegmentLen)
	case strings.HasPrefix(seg, ReservedPrefix):
		return fmt.Errorf("segment %q uses the reserved prefix %q", seg, ReservedPrefix)
	}
	if c, ok := badChar(seg); ok {
		return fmt.Errorf("character %q", c)
	}
	return nil
}

// badChar returns the first byte of s outside [A-Za-z0-9._-].
func badChar(s string) (byte, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '-':
		default:
			return c, true
		}
	}
	return 0, false
}
