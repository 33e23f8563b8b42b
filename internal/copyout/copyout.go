// Package copyout copies files out of an untrusted read-only tree (a guest
// filesystem, or the recovery tree) into a local directory. Guest data is
// hostile by assumption, so every name is checked before it touches the
// local filesystem: no absolute paths, no "..", no separators inside names,
// and symlinks are recreated as symlinks (never followed) only when their
// target stays inside the destination tree; the others are skipped and
// reported. Files are written to a temporary name, fsynced and renamed, so
// an interrupted copy never leaves a half-written file under its real name.
// Several files are copied at once (Options.Workers): each waits on its
// fsync and, from a repository, on its decode, and a folder of small files
// is mostly that.
package copyout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmvault/vmvault/vhdxfs/guest"
)

// Source is the read side: guest.FS satisfies it, and so will the recovery
// tree. Paths are io/fs paths ("." is the root).
type Source interface {
	Stat(name string) (guest.FileInfo, error)
	ReadDir(name string) ([]guest.FileInfo, error)
	Open(name string) (guest.File, error)
	Readlink(name string) (string, error)
}

// Options tune a copy.
type Options struct {
	// Progress is called after each chunk of file data is written (never
	// twice at once).
	Progress func(bytes int64)
	// Skipped is called for every entry not copied (unsafe symlink, special
	// file, unsafe name), with the reason.
	Skipped func(name, reason string)
	// Workers is the number of files copied at once (default
	// DefaultWorkers).
	Workers int
}

// DefaultWorkers is the default of Options.Workers. `vmvault files cp` of
// the reference image's ProgramData (15 k files, 270 MB) from a repository
// not in the page cache: to an ext4 disk 4.6 s one file at a time, 3.0-3.2 s
// with 4; to tmpfs 2.3 s and 1.65 s.
const DefaultWorkers = 4

// Stats summarises a copy.
type Stats struct {
	Files, Dirs, Symlinks, Skipped int
	Bytes                          int64
}

// ErrUnsafeName is returned (wrapped) for a name that would escape the
// destination.
var ErrUnsafeName = errors.New("copyout: unsafe name")

// SafeName reports whether a single path element can be created in a local
// directory without escaping it.
func SafeName(name string) bool {
	if name == "" || name == "." || name == ".." {
		return false
	}
	return !strings.ContainsAny(name, "/\\\x00")
}

// Copy copies src (a file, symlink or directory, recursively) to dest. When
// dest is an existing directory, the source's base name is created inside it
// (like cp); otherwise dest is the new name.
func Copy(ctx context.Context, s Source, src, dest string, opts Options) (Stats, error) {
	var st Stats
	src = path.Clean(strings.TrimPrefix(src, "/"))
	if src == "" {
		src = "."
	}
	if !fs.ValidPath(src) {
		return st, fmt.Errorf("copyout: %q: %w", src, fs.ErrInvalid)
	}
	fi, err := s.Stat(src)
	if err != nil {
		return st, fmt.Errorf("copyout: %w", err)
	}
	if dfi, err := os.Stat(dest); err == nil && dfi.IsDir() {
		base := path.Base(src)
		if src == "." {
			base = ""
		}
		if base != "" {
			if !SafeName(base) {
				return st, fmt.Errorf("copyout: %q: %w", base, ErrUnsafeName)
			}
			dest = filepath.Join(dest, base)
		}
	}
	root, err := filepath.Abs(dest)
	if err != nil {
		return st, fmt.Errorf("copyout: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := opts.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	c := &copier{ctx: ctx, cancel: cancel, s: s, opts: opts, st: &st, root: root, jobs: make(chan fileJob, workers)}
	for range workers {
		c.wg.Add(1)
		go c.worker()
	}
	if err := c.copy(src, fi, root); err != nil {
		// Stops the workers too; a walk stopped by a worker's failure
		// keeps that failure as the error.
		c.fail(err)
	}
	close(c.jobs)
	c.wg.Wait()
	if err := c.failed(); err != nil {
		return st, err
	}
	// Directory mtimes are set after their contents, deepest first,
	// because creating entries inside would change them again.
	for i := len(c.dirs) - 1; i >= 0; i-- {
		d := c.dirs[i]
		_ = os.Chtimes(d.path, d.mt, d.mt)
	}
	return st, nil
}

// copier walks the source on the caller's goroutine (directories and
// symlinks are made in walk order) and hands regular files to workers.
type copier struct {
	ctx    context.Context
	cancel context.CancelFunc
	s      Source
	opts   Options
	root   string    // absolute destination of the top entry
	dirs   []dirTime // made so far, in walk order (walker only)
	jobs   chan fileJob
	wg     sync.WaitGroup

	mu  sync.Mutex // guards st and err, serialises opts.Progress
	st  *Stats
	err error // the first failure (fail)
}

// fileJob is one regular file to copy.
type fileJob struct {
	src string
	fi  guest.FileInfo
	dst string
}

func (c *copier) worker() {
	defer c.wg.Done()
	for j := range c.jobs {
		if c.ctx.Err() != nil {
			continue // a copy failed or was cancelled: drain
		}
		if err := c.copyFile(j.src, j.fi, j.dst); err != nil {
			c.fail(err)
		}
	}
}

// fail records the copy's first failure and stops the rest.
func (c *copier) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.cancel()
}

func (c *copier) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// count updates the statistics.
func (c *copier) count(f func(st *Stats)) {
	c.mu.Lock()
	f(c.st)
	c.mu.Unlock()
}

func (c *copier) progress(n int64) {
	if c.opts.Progress == nil {
		return
	}
	c.mu.Lock()
	c.opts.Progress(n)
	c.mu.Unlock()
}

type dirTime struct {
	path string
	mt   time.Time
}

func (c *copier) skip(name, reason string) {
	c.count(func(st *Stats) { st.Skipped++ })
	if c.opts.Skipped != nil {
		c.opts.Skipped(name, reason)
	}
}

func (c *copier) copy(src string, fi guest.FileInfo, dst string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	switch {
	case fi.Mode.IsDir():
		return c.copyDir(src, dst)
	case fi.Mode&fs.ModeSymlink != 0:
		return c.copyLink(src, dst)
	case fi.Mode.IsRegular():
		select {
		case c.jobs <- fileJob{src, fi, dst}:
			return nil
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
	}
	c.skip(src, "not a regular file, directory or symlink")
	return nil
}

func (c *copier) copyDir(src, dst string) error {
	fi, err := c.s.Stat(src)
	if err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	c.count(func(st *Stats) { st.Dirs++ })
	c.dirs = append(c.dirs, dirTime{dst, fi.ModTime})
	ents, err := c.s.ReadDir(src)
	if err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	for _, e := range ents {
		child := path.Join(src, e.Name)
		if !SafeName(e.Name) {
			c.skip(child, "unsafe name")
			continue
		}
		cdst := filepath.Join(dst, e.Name)
		if e.Mode.IsDir() {
			if err := c.copyDir(child, cdst); err != nil {
				return err
			}
			continue
		}
		if err := c.copy(child, e, cdst); err != nil {
			return err
		}
	}
	return nil
}

// copyLink recreates a symlink whose target, resolved lexically from the
// link's own directory, stays inside the copied tree. Absolute targets refer
// to the guest's root, not ours, so they are never recreated.
func (c *copier) copyLink(src, dst string) error {
	target, err := c.s.Readlink(src)
	if err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	if target == "" || filepath.IsAbs(target) || strings.ContainsRune(target, 0) {
		c.skip(src, "symlink target outside the copied tree: "+target)
		return nil
	}
	resolved := filepath.Clean(filepath.Join(filepath.Dir(dst), filepath.FromSlash(target)))
	if resolved != c.root && !strings.HasPrefix(resolved, c.root+string(filepath.Separator)) {
		c.skip(src, "symlink target outside the copied tree: "+target)
		return nil
	}
	_ = os.Remove(dst)
	if err := os.Symlink(target, dst); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	c.count(func(st *Stats) { st.Symlinks++ })
	return nil
}

func (c *copier) copyFile(src string, fi guest.FileInfo, dst string) (err error) {
	f, err := c.s.Open(src)
	if err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	defer f.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".vmvault-copy-*")
	if err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w := &progressWriter{w: tmp, fn: c.progress, ctx: c.ctx}
	n, err := io.Copy(w, io.NewSectionReader(f, 0, f.Size()))
	if err != nil {
		return fmt.Errorf("copyout: %s: %w", src, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	if err := os.Chmod(tmp.Name(), fi.Mode.Perm()|0o600); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	if err := os.Chtimes(tmp.Name(), fi.ModTime, fi.ModTime); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("copyout: %w", err)
	}
	c.count(func(st *Stats) { st.Files++; st.Bytes += n })
	return nil
}

type progressWriter struct {
	w   io.Writer
	fn  func(int64)
	ctx context.Context
}

func (p *progressWriter) Write(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.w.Write(b)
	if p.fn != nil && n > 0 {
		p.fn(int64(n))
	}
	return n, err
}
