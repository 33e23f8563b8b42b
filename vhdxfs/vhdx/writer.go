package vhdx

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

const (
	// synthWriteBuf is the unit of source reads and file writes: large
	// enough for sequential throughput on disks and chunk stores, small
	// enough that the two buffers in flight cost 16 MiB.
	synthWriteBuf = 8 * MiB
	// synthWriters is how many of WriteFile's buffers are written at once
	// (see streamParallel).
	synthWriters = 2
	// synthHoleUnit is the granularity at which WriteFile detects zero
	// ranges and leaves them as holes instead of writing them.
	synthHoleUnit = 64 * 1024
	// synthFileMode is the mode of files made by WriteFile. CreateTemp
	// makes 0600; chmod to what os.Create gives under the usual umask 022.
	synthFileMode = 0o644
)

// WriteFile synthesizes a dynamic VHDX of the given disk (see NewSynth) and
// writes it to path atomically: the bytes go to a temporary file in the same
// directory, which is fsynced and renamed over path, then the directory is
// fsynced. On any error or cancellation the temporary file is removed and
// path is left untouched, so a crash never leaves a half-written file under
// the final name.
func WriteFile(ctx context.Context, path string, id vdisk.Identity, src io.ReaderAt, alloc []vdisk.Extent, opts SynthOptions) error {
	s, err := NewSynth(id, src, alloc, opts)
	if err != nil {
		return err
	}
	return s.WriteFile(ctx, path)
}

// WriteFile writes the synthesized file to path atomically (see the
// package-level WriteFile). All-zero ranges are left as holes, so the file
// uses about as much disk space as the allocated data.
func (s *Synth) WriteFile(ctx context.Context, path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if !renamed {
			f.Close() // may already be closed; the error is moot then
			os.Remove(tmp)
		}
	}()
	// The payload goes past the page cache (vdisk.DirectWriter); the small
	// and unaligned writes (headers, BAT, metadata) through it.
	dw := vdisk.NewDirectWriter(f)
	defer dw.Close()
	emit := func(b []byte, off int64) error {
		// Write the non-zero stretches only; skipped ranges become holes
		// (or zeros on filesystems without them) once the size is set.
		for i := 0; i < len(b); {
			j := i
			for j < len(b) && synthIsZero(b[j:min(j+synthHoleUnit, len(b))]) {
				j += synthHoleUnit
			}
			if j >= len(b) {
				break
			}
			k := j
			for k < len(b) && !synthIsZero(b[k:min(k+synthHoleUnit, len(b))]) {
				k += synthHoleUnit
			}
			k = min(k, len(b))
			_, direct, err := dw.WriteAt(b[j:k], off+int64(j))
			if err != nil {
				return err
			}
			if !direct && s.written != nil {
				s.written(f, off+int64(j), int64(k-j))
			}
			i = k
		}
		return nil
	}
	if err = s.stream(ctx, synthWriters, emit); err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	if err = dw.Close(); err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	if err = f.Truncate(s.lay.size); err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	if err = f.Chmod(synthFileMode); err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("vhdx: write %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("vhdx: write %s: %w", path, err)
	}
	renamed = true
	// The rename is durable only once the directory is synced. The file is
	// complete under its final name by now, so a failure here is reported
	// but must not remove it.
	if derr := synthSyncDir(dir); derr != nil {
		return fmt.Errorf("vhdx: write %s: sync directory: %w", path, derr)
	}
	return nil
}

// synthSyncDir fsyncs a directory so a rename in it survives a crash.
// Windows cannot flush directory handles; NTFS journals the rename.
func synthSyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// WriteTo writes the whole file to w sequentially (io.WriterTo), zeros
// included.
func (s *Synth) WriteTo(w io.Writer) (int64, error) {
	return s.WriteToContext(context.Background(), w)
}

// WriteToContext is WriteTo with cancellation between buffers.
func (s *Synth) WriteToContext(ctx context.Context, w io.Writer) (int64, error) {
	var n int64
	err := s.stream(ctx, 1, func(b []byte, _ int64) error {
		m, err := w.Write(b)
		n += int64(m)
		if err == nil && m < len(b) {
			err = io.ErrShortWrite
		}
		return err
	})
	if err != nil {
		return n, fmt.Errorf("vhdx: write: %w", err)
	}
	return n, nil
}

// stream produces the file in synthWriteBuf pieces and hands each to emit.
// One goroutine reads the next buffers from the source while writers
// goroutines call emit, each on its own buffer, so source and destination
// I/O overlap. With one writer the pieces arrive in order (WriteTo); a
// positional emit (WriteFile) takes several: its payload writes are direct
// (vdisk.DirectWriter) and wait for the device, and through the page cache
// they cost about as much CPU as producing the bytes (pwrite took ~1.2 s per
// GB of sys time on the 2-core test machine). Progress is reported in order of
// completion, never backwards. When stream returns, no source read is in
// flight any more.
func (s *Synth) stream(ctx context.Context, writers int, emit func(b []byte, off int64) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	size := s.lay.size
	nbuf := writers + 1
	free := make(chan []byte, nbuf)
	full := make(chan synthChunk, nbuf) // never blocks: only nbuf buffers circulate
	for range nbuf {
		free <- vdisk.AlignedBuffer(int(min(synthWriteBuf, size))) // for direct writes
	}
	go func() {
		defer close(full)
		for off := int64(0); off < size; {
			var buf []byte
			select {
			case <-ctx.Done():
				full <- synthChunk{err: context.Cause(ctx)}
				return
			case buf = <-free:
			}
			n := min(int64(len(buf)), size-off)
			_, err := s.ReadAt(buf[:n], off)
			full <- synthChunk{buf: buf[:n], off: off, err: err}
			if err != nil {
				return
			}
			off += n
		}
	}()
	var (
		wg       sync.WaitGroup
		progMu   sync.Mutex
		progress int64
	)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range full { // drained to the end, so the reader finishes
				if c.err != nil {
					cancel(c.err)
					continue
				}
				if context.Cause(ctx) != nil {
					continue
				}
				if err := emit(c.buf, c.off); err != nil {
					cancel(err)
					continue
				}
				if s.progress != nil {
					progMu.Lock()
					if end := c.off + int64(len(c.buf)); end > progress {
						progress = end
						s.progress(end)
					}
					progMu.Unlock()
				}
				free <- c.buf[:cap(c.buf)]
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}

type synthChunk struct {
	buf []byte
	off int64
	err error
}

// synthIsZero reports whether b is all zeros. Comparing b with itself
// shifted by one byte lets bytes.Equal's vectorized loop do the scan.
func synthIsZero(b []byte) bool {
	return len(b) == 0 || (b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1]))
}
