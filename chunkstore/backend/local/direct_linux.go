//go:build linux

package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Large objects (pack shards) are written with O_DIRECT. A backup writes
// each shard once and reads it back rarely, and then usually much later:
// through the page cache, every written byte was copied into a cache page
// that kernel writeback threads then flushed, on the same two cores the
// backup's compression needs. The reference full backup spent ~1 s of its
// 9 CPU-seconds in those copies and the writeback, and the written shards
// pushed out cached data the server still wanted (a mounted recovery point,
// the next VM's source disk). With O_DIRECT the device reads the bytes from
// our buffer. Reads stay buffered.
//
// O_DIRECT needs the buffer address, file offset and length aligned to the
// device's logical block size (4 KiB covers every device). A source given as
// backend.Buffers has its aligned slices written from where they are (a
// shard's data is a slice of the aligned pack buffer); everything else is
// gathered in a 4 KiB-aligned buffer. The last piece is padded to the
// alignment and the file truncated to its size before the fsync (it is
// still a temp file). A filesystem that refuses O_DIRECT (tmpfs before
// Linux 6.6, some FUSE filesystems) or a larger alignment turns it off for
// the backend, and the write goes on buffered: nothing is read twice.

const (
	directAlign = backend.DirectAlign
	// directMin: smaller objects (headers, small test objects) are not worth
	// a padded write and a truncate.
	directMin = 256 << 10
	// directBufSize is the gathering buffer: the unit of one synchronous
	// O_DIRECT write of what is not written in place. Shards are written in
	// parallel (one goroutine per shard), which keeps the device busy while
	// each write waits.
	directBufSize = 1 << 20
)

var directBufs = sync.Pool{New: func() any {
	b := backend.AlignedBuffer(directBufSize)
	return &b
}}

// testDirectUnsupported makes O_DIRECT writes fail as on a filesystem
// without O_DIRECT, so tests cover the fallback.
var testDirectUnsupported = false

// writeContents writes exactly size bytes of r to the new, empty file f.
func (b *Backend) writeContents(ctx context.Context, f *os.File, r io.Reader, size int64) error {
	if b.noDirect.Load() || size < directMin || !setDirect(f, true) {
		return copyExact(ctx, f, r, size)
	}
	bufp := directBufs.Get().(*[]byte)
	defer directBufs.Put(bufp)
	w := &directWriter{ctx: ctx, be: b, f: f, buf: *bufp, direct: true}
	if bufs, ok := r.(*backend.Buffers); ok {
		// In-memory slices: aligned ones are written from where they are.
		if n := bufs.Len(); n != size {
			if n < size {
				return fmt.Errorf("reader gave %d bytes, want %d: %w", n, size, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("reader gave more than %d bytes", size)
		}
		for _, p := range bufs.Take() {
			if err := w.write(p); err != nil {
				return err
			}
		}
		return w.finish(size)
	}
	for w.fo+int64(w.pend) < size {
		n, err := io.ReadFull(r, w.buf[w.pend:min(int64(len(w.buf)), int64(w.pend)+size-w.fo-int64(w.pend))])
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("reader gave %d bytes, want %d: %w", w.fo+int64(w.pend+n), size, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("read source: %w", err)
		}
		w.pend += n
		if w.pend == len(w.buf) {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return fmt.Errorf("reader gave more than %d bytes", size)
	}
	return w.finish(size)
}

// directWriter writes a file front to back with O_DIRECT: pieces whose
// memory and file offset are aligned go straight from the caller's memory,
// the rest is gathered in buf (aligned) and written from there.
type directWriter struct {
	ctx    context.Context
	be     *Backend
	f      *os.File
	buf    []byte
	pend   int   // bytes gathered in buf, to go at file offset fo
	fo     int64 // file bytes written
	direct bool  // false after the file system refused O_DIRECT
	padded bool  // the last write went past the end to the alignment
}

// zeroCopyBytes counts the bytes written straight from callers' memory
// (for tests).
var zeroCopyBytes atomic.Int64

func aligned(p []byte) bool { return uintptr(unsafe.Pointer(&p[0]))%directAlign == 0 }

// write appends p to the file.
func (w *directWriter) write(p []byte) error {
	for len(p) > 0 {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if w.direct && len(p) >= directAlign && (w.fo+int64(w.pend))%directAlign == 0 && aligned(p) {
			if err := w.flush(); err != nil { // pend is a multiple of the alignment here
				return err
			}
			n := len(p) &^ (directAlign - 1)
			if err := w.writeAt(p[:n], false); err != nil {
				return err
			}
			zeroCopyBytes.Add(int64(n))
			p = p[n:]
			continue
		}
		c := copy(w.buf[w.pend:], p)
		w.pend += c
		p = p[c:]
		if w.pend == len(w.buf) {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush writes the gathered bytes (a whole buffer, or a multiple of the
// alignment before a direct piece).
func (w *directWriter) flush() error {
	if w.pend == 0 {
		return nil
	}
	err := w.writeAt(w.buf[:w.pend], true)
	w.pend = 0
	return err
}

// writeAt writes p at fo and advances it. fromBuf: p is w.buf's, which may
// be padded with zeros to the alignment (finish truncates the padding off).
func (w *directWriter) writeAt(p []byte, fromBuf bool) error {
	n := len(p)
	piece := p
	if w.direct && fromBuf && n%directAlign != 0 {
		padTo := (n + directAlign - 1) &^ (directAlign - 1)
		clear(w.buf[n:padTo])
		piece = w.buf[:padTo]
		w.padded = true
	}
	_, err := writeAt(w.f, piece, w.fo, w.direct)
	if w.direct && directRefused(err) {
		// No O_DIRECT here after all: say so once, go on buffered.
		w.be.noDirect.Store(true)
		w.direct = false
		if !setDirect(w.f, false) {
			return fmt.Errorf("write: O_DIRECT refused and cannot be turned off: %w", err)
		}
		_, err = writeAt(w.f, piece, w.fo, false)
	}
	if err != nil {
		return err
	}
	w.fo += int64(n)
	return nil
}

// finish writes what is gathered and cuts the alignment padding off.
func (w *directWriter) finish(size int64) error {
	if err := w.flush(); err != nil {
		return err
	}
	if w.fo != size {
		return fmt.Errorf("local: wrote %d bytes, want %d", w.fo, size)
	}
	if w.padded {
		if err := w.f.Truncate(size); err != nil {
			return err
		}
	}
	return w.ctx.Err()
}

func writeAt(f *os.File, p []byte, off int64, direct bool) (int, error) {
	if direct && testDirectUnsupported {
		return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.EINVAL}
	}
	return f.WriteAt(p, off)
}

// directRefused: the errors with which file systems turn down a direct
// write (EINVAL: alignment or no O_DIRECT; EOPNOTSUPP from some FUSE and
// network file systems).
func directRefused(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP)
}

// setDirect turns O_DIRECT on or off for f; false if the kernel refused.
func setDirect(f *os.File, on bool) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			return
		}
		if on {
			fl |= unix.O_DIRECT
		} else {
			fl &^= unix.O_DIRECT
		}
		_, err = unix.FcntlInt(fd, unix.F_SETFL, fl)
		ok = err == nil
	})
	return ok
}
