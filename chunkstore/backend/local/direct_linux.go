//go:build linux

package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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
// device's logical block size. Objects are copied through a 4 KiB-aligned
// buffer, and the last piece is padded to the alignment and the file
// truncated to its size before the fsync (the file is still a temp file).
// A filesystem that refuses O_DIRECT (tmpfs before Linux 6.6, some FUSE
// filesystems) or a larger alignment turns it off for the backend, and the
// write goes on buffered from the same buffer: nothing is read twice.

const (
	directAlign = 4096
	// directMin: smaller objects (headers, small test objects) are not worth
	// a padded write and a truncate.
	directMin = 256 << 10
	// directBufSize is the unit of one synchronous O_DIRECT write. Shards are
	// written in parallel (one goroutine per shard), which keeps the device
	// busy while each write waits.
	directBufSize = 1 << 20
)

var directBufs = sync.Pool{New: func() any {
	b := make([]byte, directBufSize+directAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}
	b = b[off : off+directBufSize : off+directBufSize]
	return &b
}}

// testDirectUnsupported makes the first O_DIRECT write fail as on a
// filesystem without O_DIRECT, so tests cover the fallback.
var testDirectUnsupported = false

// writeContents writes exactly size bytes of r to the new, empty file f.
func (b *Backend) writeContents(ctx context.Context, f *os.File, r io.Reader, size int64) error {
	if b.noDirect.Load() || size < directMin || !setDirect(f, true) {
		return copyExact(ctx, f, r, size)
	}
	bufp := directBufs.Get().(*[]byte)
	defer directBufs.Put(bufp)
	buf := *bufp
	direct := true
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-off)])
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("reader gave %d bytes, want %d: %w", off+int64(n), size, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("read source: %w", err)
		}
		piece := buf[:n]
		if direct {
			// Pad the last piece to the alignment; the truncate below cuts
			// the padding off again.
			w := (n + directAlign - 1) &^ (directAlign - 1)
			clear(buf[n:w])
			piece = buf[:w]
		}
		_, err = writeAt(f, piece, off, direct)
		if direct && errors.Is(err, syscall.EINVAL) {
			// No O_DIRECT here after all: say so once, go on buffered.
			b.noDirect.Store(true)
			direct = false
			if !setDirect(f, false) {
				return fmt.Errorf("write: O_DIRECT refused and cannot be turned off: %w", err)
			}
			piece = buf[:n]
			_, err = writeAt(f, piece, off, false)
		}
		if err != nil {
			return err
		}
		off += int64(n)
	}
	if n, _ := r.Read(buf[:1]); n > 0 {
		return fmt.Errorf("reader gave more than %d bytes", size)
	}
	if direct && size%directAlign != 0 {
		if err := f.Truncate(size); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func writeAt(f *os.File, p []byte, off int64, direct bool) (int, error) {
	if direct && testDirectUnsupported {
		return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.EINVAL}
	}
	return f.WriteAt(p, off)
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
