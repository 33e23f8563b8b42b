// Package mem is an in-memory backend.Backend for fast tests of higher
// layers. It follows the same contract as backend/local (it passes
// backendtest.Run), copies data on Put and ReadAt so callers can reuse their
// buffers, and is safe for concurrent use.
package mem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// maxPrealloc caps the buffer allocated up front from a caller's size, so a
// bogus size cannot allocate gigabytes before a single byte is read.
const maxPrealloc = 64 << 20

// Backend keeps objects in a map. The zero value is not usable; call New.
type Backend struct {
	mu      sync.RWMutex
	objects map[string][]byte
	closed  bool
}

var _ backend.Backend = (*Backend)(nil)

// New returns an empty in-memory backend.
func New() *Backend {
	return &Backend{objects: make(map[string][]byte)}
}

// errClosed is returned by every verb after Close.
var errClosed = errors.New("backend closed")

// Put implements backend.Backend. The object becomes visible only once all
// size bytes have been read, so a failed Put leaves the old object (or
// none) in place.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := b.check(ctx, name); err != nil {
		return fmt.Errorf("mem: put %s: %w", name, err)
	}
	if size < 0 {
		return fmt.Errorf("mem: put %s: negative size %d", name, size)
	}
	var buf bytes.Buffer
	buf.Grow(int(min(size, maxPrealloc)))
	n, err := io.CopyN(&buf, r, size)
	if err != nil {
		if err == io.EOF {
			return fmt.Errorf("mem: put %s: reader gave %d bytes, want %d: %w", name, n, size, io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("mem: put %s: %w", name, err)
	}
	if extra, _ := r.Read(make([]byte, 1)); extra > 0 {
		return fmt.Errorf("mem: put %s: reader gave more than %d bytes", name, size)
	}
	// A cancelled context fails the Put even if the data arrived, as the
	// other backends would (they check between writes).
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: put %s: %w", name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("mem: put %s: %w", name, errClosed)
	}
	b.objects[name] = buf.Bytes()
	return nil
}

// ReadAt implements backend.Backend.
func (b *Backend) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	if err := b.check(ctx, name); err != nil {
		return 0, fmt.Errorf("mem: read %s: %w", name, err)
	}
	if off < 0 {
		return 0, fmt.Errorf("mem: read %s: negative offset %d", name, off)
	}
	b.mu.RLock()
	data, ok := b.objects[name]
	closed := b.closed
	b.mu.RUnlock()
	if closed {
		return 0, fmt.Errorf("mem: read %s: %w", name, errClosed)
	}
	if !ok {
		return 0, fmt.Errorf("mem: read %s: %w", name, backend.ErrNotFound)
	}
	// data is never modified after Put stored it (Put stores a fresh
	// buffer), so copying outside the lock is safe.
	if off >= int64(len(data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if err := b.check(ctx, name); err != nil {
		return backend.ObjectInfo{}, fmt.Errorf("mem: stat %s: %w", name, err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return backend.ObjectInfo{}, fmt.Errorf("mem: stat %s: %w", name, errClosed)
	}
	data, ok := b.objects[name]
	if !ok {
		return backend.ObjectInfo{}, fmt.Errorf("mem: stat %s: %w", name, backend.ErrNotFound)
	}
	return backend.ObjectInfo{Name: name, Size: int64(len(data))}, nil
}

// List implements backend.Backend. It calls fn on a snapshot taken under the
// lock and without holding it, so fn may call back into the backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mem: list %s: %w", prefix, err)
	}
	if err := backend.ValidatePrefix(prefix); err != nil {
		return fmt.Errorf("mem: list %s: %w", prefix, err)
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return fmt.Errorf("mem: list %s: %w", prefix, errClosed)
	}
	var infos []backend.ObjectInfo
	for name, data := range b.objects {
		if strings.HasPrefix(name, prefix) {
			infos = append(infos, backend.ObjectInfo{Name: name, Size: int64(len(data))})
		}
	}
	b.mu.RUnlock()
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mem: list %s: %w", prefix, err)
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := b.check(ctx, name); err != nil {
		return fmt.Errorf("mem: delete %s: %w", name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("mem: delete %s: %w", name, errClosed)
	}
	delete(b.objects, name)
	return nil
}

// Close drops all objects; later calls fail.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.objects = nil
	return nil
}

func (b *Backend) check(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return backend.ValidateName(name)
}
