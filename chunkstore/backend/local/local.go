// Package local is a backend.Backend over one directory of the local
// filesystem: an object named "pool0/ab/abcd.shard" is the file
// <root>/pool0/ab/abcd.shard.
//
// # Atomic and durable Put
//
// Put writes to a temporary file ".tmp-<random>" in the object's own
// directory (same filesystem, so rename is atomic), fsyncs it, renames it
// over the final name and fsyncs the directory. A reader therefore sees the
// old object or the new one, never a mix; after a crash at any point the
// name holds a complete object or nothing, and the only debris is
// unreferenced temp files, which List skips (backend.ReservedPrefix makes
// them invalid names) and Clean removes. The first Put into a directory
// also fsyncs its parents up to the root, once per process and directory,
// so a freshly created pack directory cannot be lost with the objects in it.
//
// # Permissions
//
// Files are created 0600 and directories 0700: the objects are backups of
// whole virtual machines (credentials, databases, mail), unencrypted unless
// the repository is, and only the server's user has any business reading
// them. Anyone who needs group access can wrap the repository in a
// directory with the right ACLs; we will not loosen the default.
//
// # Crash debris
//
// Open removes temp files older than Options.TempMaxAge (default one hour)
// left by a crashed Put. Younger ones are kept because another process (or
// another Backend on the same directory) may still be writing them; Clean
// can be called directly with any age.
//
// # Limitations
//
// A name cannot be both an object and a directory of other objects
// ("a" and "a/b"), as on any filesystem; Put fails for the second one.
// Empty directories are not removed by Delete (pack directories are reused).
// On Windows, replacing or deleting an object while another goroutine is
// reading it may fail with a sharing violation.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Options tune a local backend. The zero value is the recommended setting.
type Options struct {
	// MaxOpenFiles bounds the cache of open read handles (default 256).
	// Negative disables the cache: every ReadAt opens and closes the file.
	MaxOpenFiles int

	// TempMaxAge is the age above which Open removes leftover temp files
	// (default 1h). Negative disables the cleanup at Open.
	TempMaxAge time.Duration

	// BufferedWrites writes large objects through the page cache. By
	// default, on Linux, objects of 256 KiB and more are written with
	// O_DIRECT (see direct_linux.go): written shards then neither cost the
	// CPU of page-cache writeback nor evict data the server reads.
	BufferedWrites bool
}

const (
	defaultMaxOpenFiles = 256
	defaultTempMaxAge   = time.Hour
	dirMode             = 0o700 // see "Permissions"; files get 0600 from os.CreateTemp
	copyBufSize         = 1 << 20
)

// Backend is a directory-backed backend.Backend. It is safe for concurrent
// use; several Backends (or processes) may share one directory.
type Backend struct {
	root    string
	handles *handleCache
	closed  atomic.Bool
	// durable holds directories (absolute paths) whose entry in their parent,
	// and all ancestors' entries up to root, are known to be fsynced.
	durable sync.Map
	// noDirect: large objects are written through the page cache, because
	// Options.BufferedWrites asked for it or the filesystem refused O_DIRECT
	// (see direct_linux.go).
	noDirect atomic.Bool
}

var _ backend.Backend = (*Backend)(nil)

var errClosed = errors.New("backend closed")

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Open returns a backend rooted at dir, creating dir (0700) if it does not
// exist, and removes stale temp files as described in the package comment.
// The walk for stale temp files reads every directory under dir once.
func Open(dir string, opts *Options) (*Backend, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxOpenFiles == 0 {
		o.MaxOpenFiles = defaultMaxOpenFiles
	}
	if o.TempMaxAge == 0 {
		o.TempMaxAge = defaultTempMaxAge
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("local: open %s: %w", dir, err)
	}
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(root, dirMode); err != nil {
			return nil, fmt.Errorf("local: open %s: %w", dir, err)
		}
		// Make the new root's own entry durable, or the first objects
		// could vanish with it after a power loss.
		if err := syncDir(filepath.Dir(root)); err != nil {
			return nil, fmt.Errorf("local: open %s: sync parent: %w", dir, err)
		}
		fi, err = os.Stat(root)
	} else if err == nil {
		// Best effort for a root someone else just created (chunkstore's
		// init makes pool directories with MkdirAll); an unreadable parent
		// is not a reason to refuse an existing repository.
		_ = syncDir(filepath.Dir(root))
	}
	if err != nil {
		return nil, fmt.Errorf("local: open %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("local: open %s: not a directory", dir)
	}
	b := &Backend{root: root, handles: newHandleCache(max(o.MaxOpenFiles, 0))}
	b.noDirect.Store(o.BufferedWrites)
	b.durable.Store(root, true)
	if o.TempMaxAge > 0 {
		if _, err := b.Clean(context.Background(), o.TempMaxAge); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Root returns the absolute directory the backend stores objects in.
func (b *Backend) Root() string { return b.root }

// path maps a validated name to its file.
func (b *Backend) path(name string) string {
	return filepath.Join(b.root, filepath.FromSlash(name))
}

func (b *Backend) check(ctx context.Context, name string) error {
	if b.closed.Load() {
		return errClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return backend.ValidateName(name)
}

// Put implements backend.Backend; see "Atomic and durable Put" in the
// package comment.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := b.check(ctx, name); err != nil {
		return fmt.Errorf("local: put %s: %w", name, err)
	}
	if size < 0 {
		return fmt.Errorf("local: put %s: negative size %d", name, size)
	}
	if err := b.put(ctx, name, r, size); err != nil {
		return fmt.Errorf("local: put %s: %w", name, err)
	}
	return nil
}

func (b *Backend) put(ctx context.Context, name string, r io.Reader, size int64) (err error) {
	path := b.path(name)
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, backend.ReservedPrefix+"*")
	if errors.Is(err, fs.ErrNotExist) {
		// First object in a new directory: this is the only path that
		// creates directories, so the common case costs no extra syscalls.
		if err = os.MkdirAll(dir, dirMode); err != nil {
			return err
		}
		f, err = os.CreateTemp(dir, backend.ReservedPrefix+"*")
	}
	if err != nil {
		return err
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if err != nil && !renamed {
			f.Close() // may already be closed; the error is irrelevant then
			os.Remove(tmp)
		}
	}()
	if err = b.writeContents(ctx, f, r, size); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	// Invalidate before the rename to release our own idle handle (Windows
	// cannot rename over an open file) and after it so no reader that
	// opened the old file in between keeps it cached.
	b.handles.invalidate(name)
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	renamed = true
	b.handles.invalidate(name)
	// From here the object is complete and visible; an error only means
	// its durability is unknown, and there is nothing to undo.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return b.makeDurable(dir)
}

// makeDurable fsyncs the parent of every directory between root and dir
// whose entry is not yet known to be durable, top-down, and records them.
// Top-down matters: a directory is recorded only after all its ancestors
// were, so another Put that finds dir recorded may skip the walk.
func (b *Backend) makeDurable(dir string) error {
	if _, ok := b.durable.Load(dir); ok {
		return nil
	}
	var chain []string
	for d := dir; d != b.root && len(d) > len(b.root); d = filepath.Dir(d) {
		chain = append(chain, d)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		d := chain[i]
		if _, ok := b.durable.Load(d); ok {
			continue
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return fmt.Errorf("sync directory %s: %w", filepath.Dir(d), err)
		}
		b.durable.Store(d, true)
	}
	return nil
}

// copyExact copies exactly size bytes from r to w in large writes, checking
// ctx between them, and fails if r has fewer or more bytes.
func copyExact(ctx context.Context, w io.Writer, r io.Reader, size int64) error {
	if wt, ok := r.(io.WriterTo); ok {
		// In-memory sources (shards are bytes.Readers, and io.MultiReader
		// passes WriteTo on to its parts) write their slices straight to
		// the file: no copy through a buffer, which cost ~0.1 s of CPU per
		// GB written.
		ew := &exactWriter{ctx: ctx, w: w, left: size}
		if _, err := wt.WriteTo(ew); err != nil {
			if ew.over {
				return fmt.Errorf("reader gave more than %d bytes", size)
			}
			return err
		}
		if ew.left > 0 {
			return fmt.Errorf("reader gave %d bytes, want %d: %w", size-ew.left, size, io.ErrUnexpectedEOF)
		}
		return ctx.Err()
	}
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	var done int64
	for done < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := r.Read(buf[:min(int64(len(buf)), size-done)])
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			done += int64(n)
		}
		if rerr == io.EOF {
			if done < size {
				return fmt.Errorf("reader gave %d bytes, want %d: %w", done, size, io.ErrUnexpectedEOF)
			}
			break
		}
		if rerr != nil {
			return fmt.Errorf("read source: %w", rerr)
		}
	}
	if n, _ := r.Read(buf[:1]); n > 0 {
		return fmt.Errorf("reader gave more than %d bytes", size)
	}
	return ctx.Err()
}

// ReadAt implements backend.Backend through a cached os.File.
func (b *Backend) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	if err := b.check(ctx, name); err != nil {
		return 0, fmt.Errorf("local: read %s: %w", name, err)
	}
	if off < 0 {
		return 0, fmt.Errorf("local: read %s: negative offset %d", name, off)
	}
	h, err := b.handles.get(name, func() (*os.File, error) { return openRegular(b.path(name)) })
	if err != nil {
		return 0, fmt.Errorf("local: read %s: %w", name, err)
	}
	n, err := h.f.ReadAt(p, off)
	b.handles.release(h)
	if err != nil && err != io.EOF {
		return n, fmt.Errorf("local: read %s: %w", name, err)
	}
	return n, err // io.EOF unwrapped, as io.ReaderAt callers expect
}

// openRegular opens path for reading, mapping "not there" and "not a file"
// to backend.ErrNotFound.
func openRegular(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, notFound(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file: %w", path, backend.ErrNotFound)
	}
	return f, nil
}

// notFound wraps backend.ErrNotFound around errors that mean the file is not
// there: ENOENT, and ENOTDIR when a parent path component is a file.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", backend.ErrNotFound, err)
	}
	return err
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if err := b.check(ctx, name); err != nil {
		return backend.ObjectInfo{}, fmt.Errorf("local: stat %s: %w", name, err)
	}
	fi, err := os.Stat(b.path(name))
	if err != nil {
		return backend.ObjectInfo{}, fmt.Errorf("local: stat %s: %w", name, notFound(err))
	}
	if !fi.Mode().IsRegular() {
		return backend.ObjectInfo{}, fmt.Errorf("local: stat %s: not a regular file: %w", name, backend.ErrNotFound)
	}
	return backend.ObjectInfo{Name: name, Size: fi.Size()}, nil
}

// List implements backend.Backend. It walks only the directory named by the
// prefix up to its last "/", and skips temp files, non-regular files and
// anything whose name is not a valid object name (a stray "lost+found").
// Objects are reported in lexical order, though callers must not rely on it.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if b.closed.Load() {
		return fmt.Errorf("local: list %s: %w", prefix, errClosed)
	}
	if err := backend.ValidatePrefix(prefix); err != nil {
		return fmt.Errorf("local: list %s: %w", prefix, err)
	}
	start := b.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = b.path(prefix[:i])
	}
	err := filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil // prefix directory absent, or removed under us
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, err := filepath.Rel(b.root, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if path == b.root || path == start {
				return nil
			}
			// Descend only into directories that can hold a match.
			dirPrefix := name + "/"
			if !strings.HasPrefix(dirPrefix, prefix) && !strings.HasPrefix(prefix, dirPrefix) {
				return fs.SkipDir
			}
			if !validDir(b.root, path) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(name, prefix) || backend.ValidateName(name) != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while we listed
			}
			return err
		}
		if err := fn(backend.ObjectInfo{Name: name, Size: fi.Size()}); err != nil {
			return stopErr{err}
		}
		return nil
	})
	var s stopErr
	if errors.As(err, &s) {
		return s.err
	}
	if err != nil {
		return fmt.Errorf("local: list %s: %w", prefix, err)
	}
	return nil
}

// stopErr carries fn's error out of WalkDir unchanged (not wrapped with our
// prefix: it is the caller's own error).
type stopErr struct{ err error }

func (s stopErr) Error() string { return s.err.Error() }

// Delete implements backend.Backend. The removal is fsynced like a Put so a
// pruned object does not come back after a crash.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := b.check(ctx, name); err != nil {
		return fmt.Errorf("local: delete %s: %w", name, err)
	}
	path := b.path(name)
	// os.Remove would happily remove an empty directory; a directory is
	// not an object, so deleting "pool0" must not touch the pool.
	if fi, err := os.Lstat(path); err != nil || fi.IsDir() {
		if err != nil && !errors.Is(notFound(err), backend.ErrNotFound) {
			return fmt.Errorf("local: delete %s: %w", name, err)
		}
		return nil
	}
	b.handles.invalidate(name)
	err := os.Remove(path)
	b.handles.invalidate(name)
	if err != nil {
		if errors.Is(notFound(err), backend.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("local: delete %s: %w", name, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("local: delete %s: sync directory: %w", name, err)
	}
	return nil
}

// Close closes cached file handles. Later calls fail; ReadAts in flight
// finish normally.
func (b *Backend) Close() error {
	b.closed.Store(true)
	b.handles.close()
	return nil
}

// Clean removes temp files (backend.ReservedPrefix) under the root whose
// modification time is more than maxAge ago, i.e. debris of Puts whose
// process died, and returns how many it removed. maxAge 0 removes all temp
// files, which is safe only when no other Put on this directory is running.
func (b *Backend) Clean(ctx context.Context, maxAge time.Duration) (int, error) {
	cutoff := time.Now().Add(-maxAge)
	removed := 0
	err := filepath.WalkDir(b.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if d.IsDir() {
			// Like List, stay out of directories no object can live in
			// (an unreadable lost+found must not make Open fail).
			if path != b.root && !validDir(b.root, path) {
				return fs.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(d.Name(), backend.ReservedPrefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if maxAge > 0 && fi.ModTime().After(cutoff) {
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed++
		return nil
	})
	if err != nil {
		return removed, fmt.Errorf("local: clean %s: %w", b.root, err)
	}
	return removed, nil
}

// validDir reports whether the directory path under root could hold objects,
// i.e. its relative path is a valid name.
func validDir(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && backend.ValidateName(filepath.ToSlash(rel)) == nil
}

// exactWriter passes at most left bytes on to w, checking ctx before each
// write; a write past the limit fails and sets over.
type exactWriter struct {
	ctx  context.Context
	w    io.Writer
	left int64
	over bool
}

var errTooLong = errors.New("local: source longer than its declared size")

func (e *exactWriter) Write(p []byte) (int, error) {
	if err := e.ctx.Err(); err != nil {
		return 0, err
	}
	if int64(len(p)) > e.left {
		e.over = true
		return 0, errTooLong
	}
	n, err := e.w.Write(p)
	e.left -= int64(n)
	return n, err
}

var _ backend.Prefetcher = (*Backend)(nil)
