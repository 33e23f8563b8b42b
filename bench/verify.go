package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Restores are checked after the timing, against an oracle that is not
// vmvault's own VHDX reader: qemu-img converts the source VHDX (and a
// restored VHDX) to raw, and the raw images are compared byte by byte.
// vmvault leaves the guest's page files out by default and restores their
// clusters as zeros, so those ranges (vhdxfs.PageFileRanges of the source,
// which is what the backup left out) must be zero in the restored image
// and everything else equal. Peers restore the VHDX file itself, which must
// equal the source file.

// findFile returns the one file under dir whose name ends in suffix.
func findFile(dir, suffix string) (string, error) {
	var found string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, suffix) {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	if found == "" {
		return "", fmt.Errorf("bench: no %s file restored under %s", suffix, dir)
	}
	return found, nil
}

// verifyOurRestore checks a vmvault restore of vm0 under dir.
func (r *runner) verifyOurRestore(ctx context.Context, dir, format string, gen int) (string, error) {
	got, err := findFile(dir, "."+format)
	if err != nil {
		return "", err
	}
	src := r.fleet.Image(0, gen)
	srcRaw, err := r.sourceRaw(ctx, gen)
	if err != nil {
		return "", err
	}
	gotRaw := got
	what := "vm0: guest bytes equal the source (qemu-img convert), page-file clusters zero"
	if format == "vhdx" {
		if _, err := run(ctx, "", "qemu-img", "check", "-q", got); err != nil {
			return "", fmt.Errorf("bench: restored VHDX: %w", err)
		}
		gotRaw = filepath.Join(r.o.WorkDir, "verify", "restored.raw")
		defer os.Remove(gotRaw)
		if _, err := run(ctx, "", "qemu-img", "convert", "-f", "vhdx", "-O", "raw", got, gotRaw); err != nil {
			return "", err
		}
		what += "; qemu-img check clean"
	}
	excl, err := pageFileExtents(src)
	if err != nil {
		return "", err
	}
	if err := compareRaw(srcRaw, gotRaw, excl); err != nil {
		return "", err
	}
	return what, nil
}

// sourceRaw converts vm0's image of generation gen to raw (once).
func (r *runner) sourceRaw(ctx context.Context, gen int) (string, error) {
	p := filepath.Join(r.o.WorkDir, "verify", fmt.Sprintf("%s-vm0-gen%d.raw", r.fleet.Key, gen))
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	if _, err := run(ctx, "", "qemu-img", "convert", "-f", "vhdx", "-O", "raw", r.fleet.Image(0, gen), p+".tmp"); err != nil {
		return "", err
	}
	return p, os.Rename(p+".tmp", p)
}

// pageFileExtents are the ranges of src a default vmvault backup leaves out.
func pageFileExtents(src string) ([]vdisk.Extent, error) {
	d, err := vhdxfs.Open(src)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer d.Close()
	pfs, _, err := vhdxfs.PageFileRanges(d)
	if err != nil {
		return nil, fmt.Errorf("bench: page files of %s: %w", src, err)
	}
	var ext []vdisk.Extent
	for _, pf := range pfs {
		ext = append(ext, pf.Extents...)
	}
	return vdisk.NormalizeExtents(ext, d.Size()), nil
}

// compareRaw compares two files of equal size byte by byte, skipping the
// regions where both are holes; inside zeroed the second must read zero.
func compareRaw(want, got string, zeroed []vdisk.Extent) error {
	a, err := os.Open(want)
	if err != nil {
		return fmt.Errorf("bench: compare: %w", err)
	}
	defer a.Close()
	b, err := os.Open(got)
	if err != nil {
		return fmt.Errorf("bench: compare: %w", err)
	}
	defer b.Close()
	ai, _ := a.Stat()
	bi, _ := b.Stat()
	if ai.Size() != bi.Size() {
		return fmt.Errorf("bench: %s is %d bytes, %s %d", got, bi.Size(), want, ai.Size())
	}
	size := ai.Size()
	const blk = 1 << 20
	ba, bb := make([]byte, blk), make([]byte, blk)
	zero := make([]byte, blk)
	zi := 0
	for off := int64(0); off < size; {
		// Skip to the next data region of either file.
		na, nb := nextData(a, off, size), nextData(b, off, size)
		next := min(na, nb)
		if next >= size {
			break
		}
		off = next / blk * blk
		n := min(int64(blk), size-off)
		if _, err := a.ReadAt(ba[:n], off); err != nil && err != io.EOF {
			return fmt.Errorf("bench: compare: %w", err)
		}
		if _, err := b.ReadAt(bb[:n], off); err != nil && err != io.EOF {
			return fmt.Errorf("bench: compare: %w", err)
		}
		// Zero the expected bytes inside the page-file ranges.
		for zi < len(zeroed) && zeroed[zi].End() <= off {
			zi++
		}
		for k := zi; k < len(zeroed) && zeroed[k].Off < off+n; k++ {
			lo, hi := max(zeroed[k].Off, off)-off, min(zeroed[k].End(), off+n)-off
			copy(ba[lo:hi], zero)
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := range n {
				if ba[i] != bb[i] {
					return fmt.Errorf("bench: %s differs from %s at byte %d", got, want, off+i)
				}
			}
		}
		off += n
	}
	return nil
}

// nextData is the offset of the first data at or after off (size if none).
func nextData(f *os.File, off, size int64) int64 {
	const seekData = 3
	d, err := f.Seek(off, seekData)
	if err != nil {
		return size
	}
	return d
}

// compareTree checks that every file of want exists under got with the
// same bytes and that got has no other files; it returns the file count.
func compareTree(want, got string) (int, error) {
	n := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(want, p)
		if err := sameFile(p, filepath.Join(got, rel)); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, err
	}
	extra := 0
	filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			extra++
		}
		return nil
	})
	if extra != n {
		return n, fmt.Errorf("bench: copied tree has %d files, source %d", extra, n)
	}
	return n, nil
}

func sameFile(a, b string) error {
	x, err := os.ReadFile(a)
	if err != nil {
		return fmt.Errorf("bench: compare: %w", err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return fmt.Errorf("bench: compare: %w", err)
	}
	if !bytes.Equal(x, y) {
		return fmt.Errorf("bench: %s differs from %s", b, a)
	}
	return nil
}
