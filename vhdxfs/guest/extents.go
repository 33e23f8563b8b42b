package guest

// Where a file's clusters are on the volume. The backup engine leaves out
// the clusters of Windows page, hibernation and swap files: they are scratch
// that Windows rewrites or discards at boot, often several GiB per VM and
// new bytes on every backup. Whatever this file returns is NOT backed up and
// reads back as zeros, so the NTFS code below errs on the side of returning
// an error: a damaged run list must cost a few GiB of storage, never the
// clusters of another file.

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"www.velocidex.com/golang/go-ntfs/parser"
)

// Extenter is an optional capability of an FS (today: NTFS only). Test for it
// with a type assertion: fsys.(guest.Extenter).
type Extenter interface {
	// FileExtents returns the volume-relative byte ranges of the clusters
	// allocated to the main (unnamed) data stream of the regular file name,
	// in file order, with ranges that are adjacent on the volume and in
	// the file merged. Every range lies inside the volume and is a whole
	// number of clusters; it includes allocated clusters past the end of
	// the data (preallocation). Sparse runs are omitted, and a file whose
	// data lives inside its metadata record (NTFS resident data) has no
	// ranges. Compressed files give an error wrapping
	// errors.ErrUnsupported (their runs hold compressed units, not file
	// bytes); a run list that is inconsistent, leaves the volume, overlaps
	// itself or overlaps an NTFS metafile gives an error wrapping
	// ErrCorrupt.
	FileExtents(name string) ([]Extent, error)
}

// Extent is a byte range [Off, Off+Len) of a guest volume.
type Extent struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// End is the first byte after the extent.
func (e Extent) End() int64 { return e.Off + e.Len }

// MaxExtents caps the data runs one file may have. A page file on a badly
// fragmented volume has thousands; a million runs is ~16 MiB of run list,
// far beyond what NTFS attribute lists hold in practice.
const MaxExtents = 1 << 20

// extentBackend is implemented by backends that can map files to clusters.
type extentBackend interface {
	extents(n node) ([]Extent, error)
}

// extentTree is a tree whose backend maps files to clusters. It is a
// separate type so that the Extenter type assertion is true exactly for the
// filesystems that can answer.
type extentTree struct{ *tree }

var _ Extenter = extentTree{}

// withExtents returns t, with the Extenter capability if its backend has it.
func withExtents(t *tree) FS {
	if _, ok := t.b.(extentBackend); ok {
		return extentTree{t}
	}
	return t
}

func (t extentTree) FileExtents(name string) ([]Extent, error) {
	n, err := t.resolve("extents", name)
	if err != nil {
		return nil, err
	}
	if !n.info.Mode.IsRegular() {
		return nil, &fs.PathError{Op: "extents", Path: name, Err: fmt.Errorf("guest: not a regular file (%v): %w", n.info.Mode.Type(), fs.ErrInvalid)}
	}
	var ext []Extent
	err = protect(t.b.kind(), name, func() error {
		var err error
		ext, err = t.b.(extentBackend).extents(n)
		return err
	})
	if err != nil {
		return nil, &fs.PathError{Op: "extents", Path: name, Err: err}
	}
	return ext, nil
}

// dataRun is one decoded NTFS mapping pair: length clusters at lcn, or a
// hole when sparse.
type dataRun struct {
	lcn, length int64
	sparse      bool
}

// decodeRunList decodes an NTFS run list (mapping pairs): a header byte
// whose low nibble is the size of the length field and whose high nibble is
// the size of the signed LCN delta (0: a sparse run), then the two
// little-endian fields; a 0 header byte ends the list. We decode it
// ourselves instead of using go-ntfs's RunList because that one reads past
// the attribute's end when the terminator is missing, cannot tell a sparse
// run from a zero delta, and does not bound the number of runs.
func decodeRunList(b []byte, maxRuns int) ([]dataRun, error) {
	var out []dataRun
	var lcn int64
	for i := 0; i < len(b); {
		h := b[i]
		i++
		if h == 0 {
			return out, nil
		}
		ls, osz := int(h&0x0F), int(h>>4)
		if ls == 0 || ls > 8 || osz > 8 || ls+osz > len(b)-i {
			return nil, fmt.Errorf("guest: ntfs: bad run header %#02x at %d: %w", h, i-1, ErrCorrupt)
		}
		var length uint64
		for k := ls - 1; k >= 0; k-- {
			length = length<<8 | uint64(b[i+k])
		}
		i += ls
		if length == 0 || length > 1<<62 {
			return nil, fmt.Errorf("guest: ntfs: run length %d at %d: %w", length, i, ErrCorrupt)
		}
		r := dataRun{length: int64(length), sparse: osz == 0}
		if osz > 0 {
			var delta int64
			for k := osz - 1; k >= 0; k-- {
				delta = delta<<8 | int64(b[i+k])
			}
			// Sign-extend the osz-byte field.
			if shift := uint(64 - 8*osz); shift > 0 {
				delta = delta << shift >> shift
			}
			i += osz
			if (delta > 0 && lcn > 1<<62-delta) || (delta < 0 && lcn < -(1<<62)-delta) {
				return nil, fmt.Errorf("guest: ntfs: run offset overflows at %d: %w", i, ErrCorrupt)
			}
			lcn += delta
			r.lcn = lcn
		}
		if len(out) >= maxRuns {
			return nil, fmt.Errorf("guest: ntfs: more than %d data runs: %w", maxRuns, ErrCorrupt)
		}
		out = append(out, r)
	}
	return nil, fmt.Errorf("guest: ntfs: run list not terminated: %w", ErrCorrupt)
}

// ntfsMetaRecords are the MFT records checked against a file's runs: the
// reserved metafiles ($MFT, $MFTMirr, $LogFile, $AttrDef, $Bitmap, $Boot,
// $UpCase...). A page file sharing clusters with one of them is damage, and
// leaving those clusters out would make every restore unmountable.
const ntfsMetaRecords = 16

func (n *ntfsFS) extents(nd node) ([]Extent, error) {
	// A damaged index entry may name a metafile ("pagefile.sys" -> record
	// 0); its clusters are the filesystem itself, never a user file's.
	if nd.ref < ntfsFirstUser {
		return nil, fmt.Errorf("guest: ntfs: record %d is a reserved metafile record: %w", nd.ref, ErrCorrupt)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	runs, err := n.clusterRuns(nd.ref)
	if err != nil {
		return nil, err
	}
	if len(runs) == 0 {
		return nil, nil
	}
	// The file's own runs must not overlap: two VCNs on one cluster
	// means a cross-linked run list.
	sorted := slices.Clone(runs)
	sortRuns(sorted)
	if sorted[0].lcn == 0 {
		return nil, fmt.Errorf("guest: ntfs: record %d maps cluster 0 (the boot sector): %w", nd.ref, ErrCorrupt)
	}
	for i := 1; i < len(sorted); i++ {
		if sorted[i].lcn < sorted[i-1].lcn+sorted[i-1].length {
			return nil, fmt.Errorf("guest: ntfs: record %d maps cluster %d twice: %w", nd.ref, sorted[i].lcn, ErrCorrupt)
		}
	}
	for ref := uint64(0); ref < ntfsMetaRecords; ref++ {
		if !n.inUse(ref) {
			continue // a free reserved record's stale runs are not a metafile
		}
		meta, err := n.clusterRuns(ref)
		if err != nil {
			continue // a metafile we cannot map cannot be checked; the rest still are
		}
		sortRuns(meta)
		if lcn, ok := overlap(sorted, meta); ok {
			return nil, fmt.Errorf("guest: ntfs: record %d shares cluster %d with metafile record %d: %w", nd.ref, lcn, ref, ErrCorrupt)
		}
	}
	cs := n.ctx.ClusterSize
	out := make([]Extent, 0, len(runs))
	for _, r := range runs {
		e := Extent{Off: r.lcn * cs, Len: r.length * cs}
		if k := len(out) - 1; k >= 0 && out[k].End() == e.Off {
			out[k].Len += e.Len
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// clusterRuns returns the allocated (non-sparse) runs of the unnamed $DATA
// attribute of MFT record ref in file order, after checking that the
// attribute's segments chain up VCN by VCN, that the runs add up to the
// segment sizes and to the allocated size, and that every run lies inside
// the volume. Resident data and a record without $DATA give no runs. The
// caller holds n.mu.
func (n *ntfsFS) clusterRuns(ref uint64) ([]dataRun, error) {
	m, err := n.ctx.GetMFT(int64(ref))
	if err != nil {
		return nil, fmt.Errorf("guest: ntfs: MFT record %d: %w", ref, err)
	}
	// EnumerateAttributes follows $ATTRIBUTE_LIST into extension records,
	// so a heavily fragmented file's later segments are included.
	var segs []*parser.NTFS_ATTRIBUTE
	for _, a := range m.EnumerateAttributes(n.ctx) {
		if a.Type().Value != parser.ATTR_TYPE_DATA || a.Name() != "" {
			continue
		}
		if a.IsResident() {
			if len(segs) > 0 {
				return nil, fmt.Errorf("guest: ntfs: record %d: resident and non-resident $DATA: %w", ref, ErrCorrupt)
			}
			return nil, nil
		}
		segs = append(segs, a)
	}
	if len(segs) == 0 {
		return nil, nil
	}
	slices.SortStableFunc(segs, func(a, b *parser.NTFS_ATTRIBUTE) int {
		return cmpUint64(a.Runlist_vcn_start(), b.Runlist_vcn_start())
	})
	first := segs[0]
	if parser.IsCompressed(first.Flags()) {
		return nil, fmt.Errorf("guest: ntfs: record %d: compressed data has no file-order clusters: %w", ref, errors.ErrUnsupported)
	}
	cs := n.ctx.ClusterSize
	if cs <= 0 {
		return nil, fmt.Errorf("guest: ntfs: cluster size %d: %w", cs, ErrCorrupt)
	}
	volClusters := n.size / cs
	alloc := first.Allocated_size()
	if first.Runlist_vcn_start() != 0 || alloc%uint64(cs) != 0 || alloc/uint64(cs) > uint64(volClusters) {
		return nil, fmt.Errorf("guest: ntfs: record %d: first $DATA segment starts at VCN %d with %d allocated bytes: %w", ref, first.Runlist_vcn_start(), alloc, ErrCorrupt)
	}
	if alloc == 0 {
		return nil, nil
	}
	recSize := n.ctx.GetRecordSize()
	var out []dataRun
	next := uint64(0) // the VCN the next segment must start at
	for _, a := range segs {
		start, end := a.Runlist_vcn_start(), a.Runlist_vcn_end()
		if start != next || end < start || end >= alloc/uint64(cs) {
			return nil, fmt.Errorf("guest: ntfs: record %d: $DATA segment VCN %d-%d after VCN %d: %w", ref, start, end, next, ErrCorrupt)
		}
		alen, roff := int64(a.Length()), int64(a.Runlist_offset())
		if roff < 64 || roff >= alen || alen > recSize {
			return nil, fmt.Errorf("guest: ntfs: record %d: run list at %d of a %d-byte attribute: %w", ref, roff, alen, ErrCorrupt)
		}
		b := make([]byte, alen-roff)
		if k, err := a.Reader.ReadAt(b, a.Offset+roff); k != len(b) {
			return nil, fmt.Errorf("guest: ntfs: record %d: read run list: %v: %w", ref, err, ErrCorrupt)
		}
		runs, err := decodeRunList(b, MaxExtents-len(out))
		if err != nil {
			return nil, fmt.Errorf("guest: ntfs: record %d: %w", ref, err)
		}
		var vcns uint64
		for _, r := range runs {
			vcns += uint64(r.length) // each length < 2^62 and there are < 2^20
			if r.sparse {
				continue
			}
			if r.lcn < 0 || r.length > volClusters || r.lcn > volClusters-r.length {
				return nil, fmt.Errorf("guest: ntfs: record %d: run of %d clusters at %d outside the volume's %d: %w", ref, r.length, r.lcn, volClusters, ErrCorrupt)
			}
			out = append(out, r)
		}
		if vcns != end-start+1 {
			return nil, fmt.Errorf("guest: ntfs: record %d: runs cover %d clusters, segment VCN %d-%d: %w", ref, vcns, start, end, ErrCorrupt)
		}
		next = end + 1
	}
	if next != alloc/uint64(cs) {
		return nil, fmt.Errorf("guest: ntfs: record %d: runs end at VCN %d, %d bytes allocated: %w", ref, next, alloc, ErrCorrupt)
	}
	return out, nil
}

// inUse reports whether MFT record ref is allocated. The caller holds n.mu.
func (n *ntfsFS) inUse(ref uint64) bool {
	m, err := n.ctx.GetMFT(int64(ref))
	if err != nil {
		return false
	}
	return parser.ParseUint16(m.Reader, m.Profile.Off_MFT_ENTRY_Flags+m.Offset)&1 != 0
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func sortRuns(r []dataRun) {
	slices.SortFunc(r, func(a, b dataRun) int { return cmpUint64(uint64(a.lcn), uint64(b.lcn)) })
}

// overlap reports the first cluster two LCN-sorted run lists share.
func overlap(a, b []dataRun) (int64, bool) {
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].lcn, b[j].lcn), min(a[i].lcn+a[i].length, b[j].lcn+b[j].length)
		if lo < hi {
			return lo, true
		}
		if a[i].lcn+a[i].length <= b[j].lcn+b[j].length {
			i++
		} else {
			j++
		}
	}
	return 0, false
}
