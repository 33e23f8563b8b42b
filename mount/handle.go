package mount

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/vmvault/vmvault/vhdxfs/guest"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
	"github.com/vmvault/vmvault/vhdxfs/vhdx"
)

// Handle is an open file of the tree. It satisfies guest.File (so the tree
// is a copyout.Source) and is what the FUSE adapters keep per open file.
// ReadAt is safe for concurrent use and takes no lock; a read that follows
// the previous one starts asynchronous read-ahead into the shared block
// cache, with a window that doubles up to Options.ReadAhead.
type Handle struct {
	t      *Tree
	path   string
	r      io.ReaderAt
	size   int64
	closer func() error   // closes r when the handle owns it (guest/config files)
	alloc  []vdisk.Extent // ranges that may hold data; nil = all (for Seek)

	next   atomic.Int64 // offset right after the last read
	ahead  atomic.Int64 // read-ahead has read up to here
	want   atomic.Int64 // read-ahead should reach here
	window atomic.Int64 // current read-ahead window
	busy   atomic.Bool  // one read-ahead goroutine per handle at a time
	wg     sync.WaitGroup
	closed atomic.Bool
	// mu orders starting a read-ahead goroutine (wg.Add) with Close
	// (wg.Wait); it is never taken by a plain read.
	mu sync.Mutex
}

var _ guest.File = (*Handle)(nil)

// Size is the file size.
func (h *Handle) Size() int64 { return h.size }

// Path is the file's path in the tree.
func (h *Handle) Path() string { return h.path }

// ReadAt reads like os.File.ReadAt: io.EOF when the file ends before p is
// full. A failed read (a damaged chunk) is logged with the file, the range
// and the underlying error, which names the chunk; other ranges of the same
// file keep working.
func (h *Handle) ReadAt(p []byte, off int64) (int, error) {
	if h.closed.Load() {
		return 0, fmt.Errorf("mount: %s: read after close: %w", h.path, ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("mount: %s: read at %d: negative offset", h.path, off)
	}
	if off >= h.size {
		return 0, io.EOF
	}
	if !h.t.enter() {
		return 0, fmt.Errorf("mount: %s: %w", h.path, ErrClosed)
	}
	defer h.t.leave()
	var eof error
	if rem := h.size - off; int64(len(p)) > rem {
		p = p[:rem]
		eof = io.EOF
	}
	n, err := h.r.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(p)) {
		err = fmt.Errorf("mount: %s: read %d bytes at %d: %w", h.path, len(p), off, err)
		h.t.logReadError(err)
		return n, err
	}
	h.readAhead(off, int64(n))
	return n, eof
}

// lender is a reader that can lend its bytes instead of copying them: the
// disks' cachedDisk and the .vhdx view over one (vhdx.Lender).
type lender interface {
	LendAt(off int64, n int) (bufs [][]byte, done func(), ok bool)
}

var (
	_ lender = (*cachedDisk)(nil)
	_ lender = (*vhdx.Synth)(nil)
)

// Lend is ReadAt without the copy, for readers that keep the bytes in the
// block cache anyway (.raw and .vhdx): bufs hold up to n bytes at off
// (fewer at the end of the file), read-only, until release is called. The
// FUSE adapter writes its reply from them; a cached block costs one copy
// (into the kernel) instead of two. ok false means the bytes cannot be
// lent (another kind of file, a random small read, a damaged block, the
// end of the file): use ReadAt, which also reports any error.
func (h *Handle) Lend(off int64, n int) (bufs [][]byte, release func(), ok bool) {
	l, isLender := h.r.(lender)
	if !isLender || off < 0 || off >= h.size || n <= 0 || h.closed.Load() {
		return nil, nil, false
	}
	if !h.t.enter() {
		return nil, nil, false
	}
	defer h.t.leave()
	m := min(int64(n), h.size-off)
	if bufs, release, ok = l.LendAt(off, int(m)); ok {
		h.readAhead(off, m)
	}
	return bufs, release, ok
}

// readAhead starts prefetching when reads are sequential. It never blocks
// the caller: one prefetch goroutine per handle runs at a time and keeps
// going until it has caught up with the furthest target any read asked for
// (reads while it runs only raise the target); a global limit keeps
// prefetching from starving foreground reads on a small machine.
func (h *Handle) readAhead(off, n int64) {
	limit := h.t.opts.ReadAhead
	if limit <= 0 {
		return
	}
	end := off + n
	if end >= h.size {
		// Read to the end (every small file's first read): nothing is
		// ahead, and a prefetch would only re-read the last block and
		// make Close wait for it.
		h.next.Store(end)
		return
	}
	prev := h.next.Swap(end)
	if off != prev {
		h.window.Store(0) // random access: no read-ahead
		return
	}
	w := h.window.Load()
	switch {
	case w == 0:
		w = h.t.opts.BlockSize
	case w < limit:
		w = min(2*w, limit)
	}
	h.window.Store(w)
	target := min(end+w, h.size)
	if target > h.want.Load() {
		h.want.Store(target)
	}
	if h.ahead.Load() >= target || h.closed.Load() || !h.busy.CompareAndSwap(false, true) {
		return
	}
	select {
	case h.t.prefetchSlots <- struct{}{}:
	default:
		h.busy.Store(false)
		return
	}
	bs := h.t.opts.BlockSize
	from := max(h.ahead.Load(), end)
	from -= from % bs // whole cache blocks
	h.mu.Lock()
	if h.closed.Load() {
		h.mu.Unlock()
		<-h.t.prefetchSlots
		h.busy.Store(false)
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer func() {
			<-h.t.prefetchSlots
			h.busy.Store(false)
			h.wg.Done()
		}()
		if !h.t.enter() {
			return
		}
		defer h.t.leave()
		// Blocks are fetched in parallel (against a source with latency
		// that is what makes read-ahead pay), and the target is looked at
		// again whenever one completes, so the pipeline stays full while
		// the reader moves on.
		var failed atomic.Bool
		done := make(chan struct{}, prefetchParallel)
		inflight := 0
		for pos := from; ; {
			for inflight < prefetchParallel && pos < h.want.Load() && !h.closed.Load() && !failed.Load() {
				m := min(bs, h.size-pos)
				inflight++
				go func(pos, m int64) {
					defer func() { done <- struct{}{} }()
					// Errors are not reported here: the foreground read of
					// the same range reports them, with the file name.
					if !h.prefetch(pos, m) {
						failed.Store(true)
					}
				}(pos, m)
				pos += m
				h.ahead.Store(pos)
			}
			if inflight == 0 {
				return
			}
			<-done
			inflight--
		}
	}()
}

// prefetch gets [pos, pos+m) into the cache. A reader that lends its
// bytes fills its blocks without copying them anywhere (the loan is
// returned at once); others are read into a scratch buffer.
func (h *Handle) prefetch(pos, m int64) bool {
	if l, ok := h.r.(lender); ok {
		if _, done, ok := l.LendAt(pos, int(m)); ok {
			done()
			return true
		}
	}
	buf := h.t.bufPool.Get().(*[]byte)
	defer h.t.bufPool.Put(buf)
	_, err := h.r.ReadAt((*buf)[:m], pos)
	return err == nil || errors.Is(err, io.EOF)
}

// Close waits for the handle's read-ahead and releases what it owns.
func (h *Handle) Close() error {
	h.mu.Lock()
	already := h.closed.Swap(true)
	h.mu.Unlock()
	if already {
		return nil
	}
	h.wg.Wait()
	if h.closer != nil {
		if err := h.closer(); err != nil {
			return fmt.Errorf("mount: close %s: %w", h.path, err)
		}
	}
	return nil
}
