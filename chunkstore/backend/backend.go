// Package backend is the object-storage seam under chunkstore: a handful of
// verbs on named, immutable objects. A local directory implements it today;
// an S3-compatible store can follow without chunkstore changing.
//
// Names are slash-separated relative paths ("pool0/ab/abcd....shard") made of
// [A-Za-z0-9._-] segments; implementations reject anything else (no "..",
// no absolute paths).
package backend

import (
	"context"
	"errors"
	"io"
)

// ErrNotFound is returned (wrapped) when an object does not exist.
var ErrNotFound = errors.New("backend: object not found")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name string
	Size int64
}

// Backend stores immutable objects.
type Backend interface {
	// Put stores size bytes from r under name atomically and durably: when
	// Put returns nil, the whole object is visible and survives a crash;
	// when it fails or the process dies, no partial object is visible under
	// name. Putting an existing name replaces it atomically.
	Put(ctx context.Context, name string, r io.Reader, size int64) error

	// ReadAt reads len(p) bytes of object name from offset off. A short
	// object gives io.ErrUnexpectedEOF / io.EOF like io.ReaderAt; a missing
	// one gives an error wrapping ErrNotFound.
	ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error)

	// Stat returns the object's size, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn for every object whose name starts with prefix, in no
	// particular order. Returning an error from fn stops the listing.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object; deleting a missing object is not an error.
	Delete(ctx context.Context, name string) error

	// Close releases resources.
	Close() error
}
