package vdisk

import (
	"os"
	"sync/atomic"
	"unsafe"
)

// DirectWriter writes a new file (a restored disk) with O_DIRECT where it
// can: large pieces whose memory address, file offset and length are
// aligned go through a second descriptor opened with O_DIRECT, the rest
// (headers, tables, an unaligned tail) through the file itself.
//
// Why: a restore writes each byte once and fsyncs at the end. Through the
// page cache the kernel copies every byte into a cache page and writeback
// flushes it later, on the cores that decompress: in a 2-core VHDX restore
// of the reference image that copy alone was a third of the CPU time. The
// kernel keeps the two descriptors coherent (a direct write drops cached
// pages of its range), and the caller's fsync of the file covers both.
// When the file system refuses a direct write (EINVAL), the write is
// repeated buffered and direct writes stop for the file.
type DirectWriter struct {
	f        *os.File
	direct   *os.File // nil: no O_DIRECT for this file
	memAlign int64
	offAlign int64
	refused  atomic.Bool
}

// DirectMin is the smallest piece worth a direct write.
const DirectMin = 64 << 10

// NewDirectWriter returns a writer for f, which must be open for writing.
// Close it (it closes only its own descriptor) before f is fsynced.
func NewDirectWriter(f *os.File) *DirectWriter {
	w := &DirectWriter{f: f}
	w.direct, w.memAlign, w.offAlign = openDirectWrite(f.Name())
	return w
}

// WriteAt writes p at off, directly when it can; direct says which way it
// went (a buffered write may want writeback started, a direct one not).
func (w *DirectWriter) WriteAt(p []byte, off int64) (n int, direct bool, err error) {
	if w.direct == nil || len(p) < DirectMin || w.refused.Load() ||
		off%w.offAlign != 0 || int64(len(p))%w.offAlign != 0 ||
		int64(uintptr(unsafe.Pointer(&p[0])))%w.memAlign != 0 {
		n, err = w.f.WriteAt(p, off)
		return n, false, err
	}
	n, err = w.direct.WriteAt(p, off)
	if err != nil && isInvalid(err) {
		w.refused.Store(true)
		n, err = w.f.WriteAt(p, off)
		return n, false, err
	}
	return n, true, err
}

// Close closes the O_DIRECT descriptor (not the file). Only the first call
// does anything, so a caller may close early and still defer it.
func (w *DirectWriter) Close() error {
	d := w.direct
	if d == nil {
		return nil
	}
	w.direct = nil
	return d.Close()
}

// AlignedBuffer returns a zeroed n-byte buffer whose address suits direct
// I/O on any device (4 KiB).
func AlignedBuffer(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	skip := int(-uintptr(unsafe.Pointer(&b[0])) & (align - 1))
	return b[skip : skip+n : skip+n]
}
