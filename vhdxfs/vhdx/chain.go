package vhdx

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// DefaultMaxChainDepth bounds differencing chains (files including the top).
const DefaultMaxChainDepth = 64

// Options tune OpenFile.
type Options struct {
	// OpenParent opens a candidate parent file named by a parent locator.
	// An error matching fs.ErrNotExist makes OpenFile try the next
	// candidate. nil opens files from the file system.
	OpenParent func(path string) (r io.ReaderAt, size int64, c io.Closer, err error)
	// MaxChainDepth bounds the number of files in the chain; 0 means
	// DefaultMaxChainDepth.
	MaxChainDepth int
}

// ParentNotFoundError reports a differencing disk whose parent could not be
// found at any path its locator names. It matches fs.ErrNotExist.
type ParentNotFoundError struct {
	Child   string   // file whose parent is missing
	Locator string   // the locator path, as stored (e.g. `.\parent.avhdx`)
	Tried   []string // local paths tried, in order
}

func (e *ParentNotFoundError) Error() string {
	return fmt.Sprintf("vhdx: open %s: parent not found: %s (tried %s)",
		filepath.Base(e.Child), e.Locator, strings.Join(e.Tried, ", "))
}

func (e *ParentNotFoundError) Unwrap() error { return fs.ErrNotExist }

// Open opens a VHDX file and, for a differencing disk, its parents through
// the parent locators. Close releases every file.
func Open(path string) (*Disk, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vhdx: %w", err)
	}
	d, err := OpenFile(f, st.Size(), path, Options{})
	if err != nil {
		f.Close()
		return nil, err
	}
	d.closers = append(d.closers, f)
	return d, nil
}

// OpenFile opens the VHDX file read through f (size bytes, called name,
// which also anchors relative parent paths). It does not take ownership of
// f; parents it opens are closed by Disk.Close.
func OpenFile(f io.ReaderAt, size int64, name string, opts Options) (*Disk, error) {
	maxDepth := opts.MaxChainDepth
	if maxDepth <= 0 {
		maxDepth = DefaultMaxChainDepth
	}
	openParent := opts.OpenParent
	if openParent == nil {
		openParent = rdOpenOS
	}
	d := &Disk{}
	seen := map[string]bool{rdCanon(name): true}
	r, sz, nm := f, size, name
	for {
		info, p, err := parseFile(r, sz)
		if err != nil {
			if len(d.layers) > 0 {
				err = fmt.Errorf("vhdx: open parent %s: %w", nm, err)
			}
			d.Close()
			return nil, err
		}
		l := newLayer(nm, r, info, p)
		l.probeHost(sz)
		if len(d.layers) > 0 {
			if err := checkParent(d.layers[len(d.layers)-1], l); err != nil {
				d.Close()
				return nil, err
			}
		}
		d.layers = append(d.layers, l)
		if !info.Metadata.HasParent {
			break
		}
		if len(d.layers) >= maxDepth {
			d.Close()
			return nil, fmt.Errorf("vhdx: open %s: differencing chain longer than %d files: %w", filepath.Base(name), maxDepth, vdisk.ErrCorrupt)
		}
		path, pr, psz, c, err := resolveParent(nm, info.Metadata.ParentLocator, openParent)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.closers = append(d.closers, c)
		k := rdCanon(path)
		if seen[k] {
			d.Close()
			return nil, fmt.Errorf("vhdx: open %s: differencing chain loops back to %s: %w", filepath.Base(name), path, vdisk.ErrCorrupt)
		}
		seen[k] = true
		r, sz, nm = pr, psz, path
	}
	top := d.layers[0]
	md := top.info.Metadata
	d.info = top.info
	d.id = vdisk.Identity{
		Format:             "vhdx",
		DiskID:             md.DiskID,
		DataWriteGUID:      top.dataGUID,
		VirtualSize:        md.VirtualSize,
		LogicalSectorSize:  md.LogicalSectorSize,
		PhysicalSectorSize: md.PhysicalSectorSize,
		BlockSize:          md.BlockSize,
		Fixed:              md.LeaveBlocksAllocated,
		ChainLength:        len(d.layers),
	}
	if len(d.layers) > 1 {
		d.id.ParentPath = d.layers[1].name
	}
	return d, nil
}

// checkParent verifies that parent is the file child's locator means: its
// DataWriteGuid equals parent_linkage (or parent_linkage2) and its logical
// sector size matches.
func checkParent(child, parent *rdLayer) error {
	loc := child.info.Metadata.ParentLocator
	ok := false
	for _, k := range []string{"parent_linkage", "parent_linkage2"} {
		if g, err := vdisk.ParseGUID(loc[k]); err == nil && g == parent.dataGUID {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("vhdx: open %s: parent %s has DataWriteGuid {%s}, want parent_linkage %s: %w",
			filepath.Base(child.name), parent.name, parent.dataGUID, loc["parent_linkage"], vdisk.ErrCorrupt)
	}
	if child.g.lss != parent.g.lss {
		return fmt.Errorf("vhdx: open %s: logical sector size %d differs from parent %s (%d): %w",
			filepath.Base(child.name), child.g.lss, parent.name, parent.g.lss, vdisk.ErrCorrupt)
	}
	return nil
}

// resolveParent tries the locator's paths in spec order: relative_path
// (relative to the child's directory), then absolute_win32_path.
// volume_path names a Windows volume GUID and cannot be resolved here.
func resolveParent(child string, loc map[string]string, open func(string) (io.ReaderAt, int64, io.Closer, error)) (string, io.ReaderAt, int64, io.Closer, error) {
	cands := parentCandidates(child, loc)
	shown := loc["relative_path"]
	if shown == "" {
		shown = loc["absolute_win32_path"]
	}
	if len(cands) == 0 {
		return "", nil, 0, nil, fmt.Errorf("vhdx: open %s: parent locator names no relative_path or absolute_win32_path (volume_path %q is not supported): %w",
			filepath.Base(child), loc["volume_path"], fs.ErrNotExist)
	}
	for _, c := range cands {
		r, n, cl, err := open(c)
		if err == nil {
			return c, r, n, cl, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", nil, 0, nil, fmt.Errorf("vhdx: open %s: parent %s: %w", filepath.Base(child), c, err)
		}
	}
	return "", nil, 0, nil, &ParentNotFoundError{Child: child, Locator: shown, Tried: cands}
}

// parentCandidates turns locator paths into local paths, in the order to try.
func parentCandidates(child string, loc map[string]string) []string {
	var out []string
	if rel := loc["relative_path"]; rel != "" {
		out = append(out, filepath.Join(filepath.Dir(child), rdFromWindows(rel)))
	}
	if abs := loc["absolute_win32_path"]; abs != "" {
		if p := rdAbsWin32(abs, runtime.GOOS == "windows"); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// rdFromWindows converts a Windows relative path (`..\dir\x.vhdx`, `.\x`)
// to the local separator.
func rdFromWindows(p string) string {
	return filepath.FromSlash(strings.ReplaceAll(p, `\`, "/"))
}

// rdAbsWin32 converts absolute_win32_path (`\\?\C:\dir\x.vhdx`). On Windows
// it is used as is without the `\\?\` prefix; elsewhere the drive letter is
// dropped, giving `/dir/x.vhdx` (useful when the same tree is visible under
// the root, harmless otherwise).
func rdAbsWin32(p string, windows bool) string {
	p = strings.TrimPrefix(p, `\\?\`)
	if windows {
		return p
	}
	if len(p) >= 2 && p[1] == ':' {
		p = p[2:]
	}
	p = strings.ReplaceAll(p, `\`, "/")
	if !strings.HasPrefix(p, "/") {
		return ""
	}
	return filepath.Clean(p)
}

func rdOpenOS(path string) (io.ReaderAt, int64, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, st.Size(), f, nil
}

// rdCanon gives a key for cycle detection.
func rdCanon(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

// Allocated returns the sorted extents that may hold data: the present
// (fully or partially) blocks of every layer, where a layer's ZERO,
// UNDEFINED or UNMAPPED block hides its parents, clipped to the virtual
// size. When a layer file is an *os.File whose holes could be probed, the
// parts of its FULLY_PRESENT blocks that lie in host-file holes read as
// zeros: they are left out and, like a ZERO block, hide the parents below
// them. PARTIALLY_PRESENT blocks always count whole.
func (d *Disk) Allocated() []vdisk.Extent {
	d.allocOnce.Do(func() {
		var acc []vdisk.Extent
		for i := len(d.layers) - 1; i >= 0; i-- {
			data, zero := d.layers[i].extents()
			acc = vdisk.NormalizeExtents(append(data, rdSubtract(acc, zero)...), d.layers[i].g.vsize)
		}
		d.alloc = acc
	})
	return append([]vdisk.Extent(nil), d.alloc...)
}

// extents lists the layer's present blocks and the blocks that read as
// zeros regardless of the parents (both normalized). The host-file holes of
// a FULLY_PRESENT block count as zero, the rest as data.
func (l *rdLayer) extents() (data, zero []vdisk.Extent) {
	for b := range l.g.nb {
		x := vdisk.Extent{Off: b * l.g.bs, Len: l.g.blockLen(b)}
		e := l.entry(b)
		switch batState(e) {
		case PayloadFullyPresent:
			if !l.hostKnown {
				data = rdAppendExtent(data, x)
				break
			}
			data, zero = l.splitHost(data, zero, x, batOffset(e))
		case PayloadPartiallyPresent:
			data = rdAppendExtent(data, x)
		case PayloadNotPresent:
		default:
			zero = rdAppendExtent(zero, x)
		}
	}
	return data, zero
}

// probeHost records the host data extents of the layer's file when it is
// an *os.File (size bytes). Any other ReaderAt, or a probe that fails,
// leaves every present block counted whole.
func (l *rdLayer) probeHost(size int64) {
	f, ok := l.r.(*os.File)
	if !ok {
		return
	}
	ext, err := vdisk.FileDataExtents(f, size)
	if err != nil {
		return
	}
	l.host, l.hostKnown = ext, true
}

// splitHost appends the virtual range x of a FULLY_PRESENT block stored at
// file offset fo to data where its file bytes are host data and to zero
// where they are host holes (or past the end of the file, which reads as
// zeros too).
func (l *rdLayer) splitHost(data, zero []vdisk.Extent, x vdisk.Extent, fo int64) ([]vdisk.Extent, []vdisk.Extent) {
	end := fo + x.Len
	i := sort.Search(len(l.host), func(i int) bool { return l.host[i].End() > fo })
	cur := fo
	for ; i < len(l.host) && l.host[i].Off < end; i++ {
		h := l.host[i]
		if h.Off > cur {
			zero = rdAppendExtent(zero, vdisk.Extent{Off: x.Off + cur - fo, Len: h.Off - cur})
			cur = h.Off
		}
		hend := min(h.End(), end)
		data = rdAppendExtent(data, vdisk.Extent{Off: x.Off + cur - fo, Len: hend - cur})
		cur = hend
	}
	if cur < end {
		zero = rdAppendExtent(zero, vdisk.Extent{Off: x.Off + cur - fo, Len: end - cur})
	}
	return data, zero
}

// rdAppendExtent appends x, merging it with an adjacent last extent.
func rdAppendExtent(s []vdisk.Extent, x vdisk.Extent) []vdisk.Extent {
	if n := len(s); n > 0 && s[n-1].End() == x.Off {
		s[n-1].Len += x.Len
		return s
	}
	return append(s, x)
}

// rdSubtract returns a minus b; both sorted and non-overlapping.
func rdSubtract(a, b []vdisk.Extent) []vdisk.Extent {
	var out []vdisk.Extent
	j := 0
	for _, x := range a {
		cur := x.Off
		for j < len(b) && b[j].End() <= cur {
			j++
		}
		for k := j; k < len(b) && b[k].Off < x.End(); k++ {
			if b[k].Off > cur {
				out = append(out, vdisk.Extent{Off: cur, Len: b[k].Off - cur})
			}
			cur = max(cur, b[k].End())
		}
		if cur < x.End() {
			out = append(out, vdisk.Extent{Off: cur, Len: x.End() - cur})
		}
	}
	return out
}
