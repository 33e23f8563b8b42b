package vhdx

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"sort"
	"unicode/utf16"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// SynthDefaultBlockSize is the payload block size used when neither the
// options nor the identity give a valid one (raw sources).
//
// Why 2 MiB: a synthesized file stores every block that intersects the
// allocation map in full, so the block size is the padding granularity. For
// the sparse disks we back up (NTFS/ext4 with holes, 4 KiB-granular
// SEEK_DATA maps, content-defined chunks of ~1 MiB) 2 MiB keeps the file
// within a few MiB of the data, while the BAT stays at 4 KiB per GiB of
// virtual size (2 MiB for a 512 GiB disk; 1 MiB blocks would double it for
// little gain, Hyper-V's 32 MiB would inflate sparse disks by up to 32 MiB
// per isolated extent).
const SynthDefaultBlockSize = 2 * MiB

// Fixed layout of a synthesized file (VHDX-NOTES section 4): header section,
// an empty 1 MiB log, the BAT at 2 MiB, the metadata region right after the
// BAT, then the payload blocks.
const (
	synthLogOffset       = 1 * MiB
	synthLogLength       = 1 * MiB
	synthBATOffset       = 2 * MiB
	synthMetadataLength  = 1 * MiB
	synthMetaItemsOffset = 64 * 1024 // item data starts 64 KiB into the region
	synthCreatorMax      = 256       // UTF-16 code units (512 bytes)
	synthDefaultCreator  = "vmvault"
)

// SynthOptions tunes NewSynth and the writers. The zero value is valid.
type SynthOptions struct {
	// BlockSize overrides the payload block size (a power of two from
	// 1 MiB to 256 MiB). 0 keeps the identity's BlockSize when it is valid,
	// otherwise SynthDefaultBlockSize.
	BlockSize uint32
	// Creator is the diagnostic creator string stored after "vhdxfile"
	// (at most 256 UTF-16 code units). Empty means "vmvault".
	Creator string
	// Progress, when set, is called by the writers after each buffer with
	// the number of bytes of the VHDX file produced so far (skipped zero
	// ranges included, so it ends at Size()). It runs on the writer's
	// goroutine and should return quickly.
	Progress func(written int64)
	// Written, when set, is called by WriteFile after each range it wrote to
	// f (the engine starts the range's writeback there, so the final fsync
	// finds little left). It runs on the writer's goroutine.
	Written func(f *os.File, off, n int64)
}

// SynthRun describes consecutive payload blocks: Blocks blocks of the
// virtual disk starting at DiskOffset are stored back to back in the VHDX
// file starting at FileOffset.
type SynthRun struct {
	FileOffset int64
	DiskOffset int64
	Blocks     int64
}

// Synth serves the bytes of a dynamic VHDX file whose guest-visible content
// is src, without materializing the file. It is immutable after NewSynth, so
// ReadAt is safe for concurrent use and takes no locks.
type Synth struct {
	lay      synthLayout
	id       vdisk.Identity
	src      io.ReaderAt
	srcSize  int64          // the source's size (the virtual size before rounding)
	ext      []vdisk.Extent // normalized allocation, clipped to the original size
	runs     []synthRun     // allocated blocks in file order (ascending disk order)
	static   []synthSeg     // non-zero bytes of the header section and metadata region
	progress func(int64)
	written  func(f *os.File, off, n int64)
}

// synthRun is a run of allocated virtual blocks [vblock, vblock+count)
// stored at file block indexes [fileIdx, fileIdx+count).
type synthRun struct {
	vblock, count, fileIdx int64
}

// synthSeg is a piece of precomputed bytes at an absolute file offset;
// everything in the header section and metadata region outside the
// segments is zero.
type synthSeg struct {
	off  int64
	data []byte
}

// synthLayout holds the offsets of a synthesized file. All of it follows
// from (virtual size, block size, logical sector size, allocated blocks), so
// it is computed by a pure function and tested by tables.
type synthLayout struct {
	virtualSize   int64 // rounded up to the logical sector size
	blockSize     int64
	chunkRatio    int64
	batEntries    int64
	batLength     int64 // BAT region length, a 1 MiB multiple
	metaOffset    int64
	payloadOffset int64
	allocBlocks   int64
	size          int64
}

// synthRegion names the part of the file an offset falls in.
type synthRegion int

const (
	synthRegHeader   synthRegion = iota // [0, 1 MiB): identifier, headers, region tables
	synthRegLog                         // [1 MiB, 2 MiB): empty log, zeros
	synthRegBAT                         // [2 MiB, metaOffset)
	synthRegMetadata                    // [metaOffset, payloadOffset)
	synthRegPayload                     // [payloadOffset, size)
	synthRegEOF                         // >= size
)

func (r synthRegion) String() string {
	switch r {
	case synthRegHeader:
		return "header"
	case synthRegLog:
		return "log"
	case synthRegBAT:
		return "bat"
	case synthRegMetadata:
		return "metadata"
	case synthRegPayload:
		return "payload"
	case synthRegEOF:
		return "eof"
	}
	return fmt.Sprintf("synthRegion(%d)", int(r))
}

// synthValidBlockSize reports whether bs is a power of two in [1, 256] MiB.
func synthValidBlockSize(bs uint32) bool {
	return bs >= MinBlockSize && bs <= MaxBlockSize && bs&(bs-1) == 0
}

// synthNewLayout computes the layout. Inputs must already be validated.
func synthNewLayout(virtualSize int64, blockSize, lss uint32, allocBlocks int64) synthLayout {
	l := synthLayout{
		virtualSize: virtualSize,
		blockSize:   int64(blockSize),
		chunkRatio:  ChunkRatio(blockSize, lss),
		batEntries:  BATEntries(virtualSize, blockSize, lss, false),
		allocBlocks: allocBlocks,
	}
	l.batLength = RoundUp(l.batEntries*8, MiB)
	if l.batLength == 0 {
		l.batLength = MiB // qemu rejects an empty region; never happens for size > 0
	}
	l.metaOffset = synthBATOffset + l.batLength
	l.payloadOffset = l.metaOffset + synthMetadataLength
	l.size = l.payloadOffset + allocBlocks*l.blockSize
	return l
}

// region returns the region holding file offset off and the end of that
// region (exclusive).
func (l synthLayout) region(off int64) (synthRegion, int64) {
	switch {
	case off < 0:
		return synthRegEOF, off // callers reject negative offsets first
	case off >= l.size:
		return synthRegEOF, off
	case off < synthLogOffset:
		return synthRegHeader, synthLogOffset
	case off < synthBATOffset:
		return synthRegLog, synthBATOffset
	case off < l.metaOffset:
		return synthRegBAT, l.metaOffset
	case off < l.payloadOffset:
		return synthRegMetadata, l.payloadOffset
	default:
		return synthRegPayload, l.size
	}
}

// synthBlockAt maps file block index k (0 = first payload block) to its
// virtual block number. runs must be sorted by fileIdx and cover k.
func synthBlockAt(runs []synthRun, k int64) int64 {
	j := sort.Search(len(runs), func(j int) bool { return runs[j].fileIdx+runs[j].count > k })
	r := runs[j]
	return r.vblock + (k - r.fileIdx)
}

// synthSourceOffset maps a payload file offset to the virtual-disk offset
// it carries and the number of bytes left in that block. ok is false outside
// the payload region.
func synthSourceOffset(l synthLayout, runs []synthRun, off int64) (disk int64, left int64, ok bool) {
	if off < l.payloadOffset || off >= l.size {
		return 0, 0, false
	}
	rel := off - l.payloadOffset
	k, x := rel/l.blockSize, rel%l.blockSize
	return synthBlockAt(runs, k)*l.blockSize + x, l.blockSize - x, true
}

// synthBuildRuns turns normalized extents into runs of allocated blocks in
// ascending order; the file index of each run continues the previous one.
func synthBuildRuns(ext []vdisk.Extent, blockSize int64) []synthRun {
	var runs []synthRun
	for _, e := range ext {
		b0 := e.Off / blockSize
		b1 := (e.End()-1)/blockSize + 1
		if n := len(runs); n > 0 {
			last := &runs[n-1]
			if end := last.vblock + last.count; b0 <= end {
				if b1 > end {
					last.count = b1 - last.vblock
				}
				continue
			}
		}
		var idx int64
		if n := len(runs); n > 0 {
			idx = runs[n-1].fileIdx + runs[n-1].count
		}
		runs = append(runs, synthRun{vblock: b0, count: b1 - b0, fileIdx: idx})
	}
	return runs
}

// NewSynth prepares a dynamic VHDX view of a disk whose guest-visible bytes
// are src and whose possibly non-zero ranges are alloc (ranges outside alloc
// are treated as zeros and never read). Only blocks that intersect alloc are
// stored (FULLY_PRESENT, ascending); all others are NOT_PRESENT.
//
// DataWriteGUID and DiskID are preserved so tools show the same identifier;
// zero ones, and the FileWriteGuid, are derived from a hash of the identity
// and allocation, so the same input gives the same bytes in every process.
// A VirtualSize that is not a multiple of the logical sector size is rounded
// up (the format requires it); the extra bytes read as zeros.
func NewSynth(id vdisk.Identity, src io.ReaderAt, alloc []vdisk.Extent, opts SynthOptions) (*Synth, error) {
	if src == nil {
		return nil, errors.New("vhdx: synth: nil source")
	}
	if id.VirtualSize <= 0 || id.VirtualSize > MaxVirtualSize {
		return nil, fmt.Errorf("vhdx: synth: virtual size %d out of range (1 byte to 64 TiB)", id.VirtualSize)
	}
	lss := id.LogicalSectorSize
	if lss == 0 {
		lss = 512
	}
	if lss != 512 && lss != 4096 {
		return nil, fmt.Errorf("vhdx: synth: logical sector size %d (want 512 or 4096)", id.LogicalSectorSize)
	}
	pss := id.PhysicalSectorSize
	if pss == 0 {
		pss = lss // raw sources know no physical size; qemu writes 512 too
	}
	if pss != 512 && pss != 4096 {
		return nil, fmt.Errorf("vhdx: synth: physical sector size %d (want 512 or 4096)", id.PhysicalSectorSize)
	}
	bs := opts.BlockSize
	switch {
	case bs != 0:
		if !synthValidBlockSize(bs) {
			return nil, fmt.Errorf("vhdx: synth: block size option %d (want a power of two from 1 MiB to 256 MiB)", bs)
		}
	case synthValidBlockSize(id.BlockSize):
		bs = id.BlockSize
	default:
		bs = SynthDefaultBlockSize
	}
	creator := opts.Creator
	if creator == "" {
		creator = synthDefaultCreator
	}
	cu := utf16.Encode([]rune(creator))
	if len(cu) > synthCreatorMax {
		return nil, fmt.Errorf("vhdx: synth: creator string is %d UTF-16 units long (max %d)", len(cu), synthCreatorMax)
	}

	for _, e := range alloc {
		if e.Len < 0 || e.Off > math.MaxInt64-e.Len {
			return nil, fmt.Errorf("vhdx: synth: bad allocation extent %+v", e)
		}
	}
	vsize := RoundUp(id.VirtualSize, int64(lss))
	// Clip to the original size so that the rounding tail reads as zeros.
	ext := vdisk.NormalizeExtents(alloc, id.VirtualSize)
	runs := synthBuildRuns(ext, int64(bs))
	var nalloc int64
	if n := len(runs); n > 0 {
		nalloc = runs[n-1].fileIdx + runs[n-1].count
	}

	eff := vdisk.Identity{
		Format:             "vhdx",
		DiskID:             id.DiskID,
		DataWriteGUID:      id.DataWriteGUID,
		VirtualSize:        vsize,
		LogicalSectorSize:  lss,
		PhysicalSectorSize: pss,
		BlockSize:          bs,
		ChainLength:        1,
	}
	if eff.DiskID.IsZero() {
		eff.DiskID = synthDeriveGUID("disk-id", eff, ext, creator)
	}
	if eff.DataWriteGUID.IsZero() {
		eff.DataWriteGUID = synthDeriveGUID("data-write", eff, ext, creator)
	}
	fileWrite := synthDeriveGUID("file-write", eff, ext, creator)

	s := &Synth{
		lay:      synthNewLayout(vsize, bs, lss, nalloc),
		id:       eff,
		src:      src,
		srcSize:  id.VirtualSize,
		ext:      ext,
		runs:     runs,
		progress: opts.Progress,
		written:  opts.Written,
	}
	s.static = synthStatic(s.lay, eff, fileWrite, cu)
	return s, nil
}

// synthDeriveGUID hashes everything that determines the file's structure.
// The label keeps the derived GUIDs of one input distinct from each other.
func synthDeriveGUID(label string, id vdisk.Identity, ext []vdisk.Extent, creator string) vdisk.GUID {
	h := sha256.New()
	var b [8]byte
	put := func(v uint64) {
		binary.LittleEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	h.Write([]byte("vmvault vhdx synth v1\x00" + label + "\x00" + creator + "\x00"))
	h.Write(id.DiskID[:])
	h.Write(id.DataWriteGUID[:])
	put(uint64(id.VirtualSize))
	put(uint64(id.LogicalSectorSize))
	put(uint64(id.PhysicalSectorSize))
	put(uint64(id.BlockSize))
	put(uint64(len(ext)))
	for _, e := range ext {
		put(uint64(e.Off))
		put(uint64(e.Len))
	}
	var g vdisk.GUID
	copy(g[:], h.Sum(nil))
	g[6] = g[6]&0x0f | 0x50 // RFC 4122 version 5 (name-based, SHA)
	g[8] = g[8]&0x3f | 0x80 // RFC 4122 variant
	return g
}

// synthStatic builds the non-zero bytes of the header section and the
// metadata region. Checksums are computed over the full structure sizes
// (4 KiB header, 64 KiB region table); only the non-zero prefix is kept.
func synthStatic(l synthLayout, id vdisk.Identity, fileWrite vdisk.GUID, creator []uint16) []synthSeg {
	le := binary.LittleEndian

	ident := make([]byte, 8+2*len(creator))
	copy(ident, SigFile)
	for i, u := range creator {
		le.PutUint16(ident[8+2*i:], u)
	}

	header := func(seq uint64) []byte {
		h := make([]byte, HeaderSize)
		copy(h, SigHeader)
		le.PutUint64(h[8:], seq)
		fw, dw := fileWrite.Mixed(), id.DataWriteGUID.Mixed()
		copy(h[16:], fw[:])
		copy(h[32:], dw[:])
		// LogGuid (48..63) stays zero: the log is empty, nothing to replay.
		le.PutUint16(h[64:], 0) // LogVersion
		le.PutUint16(h[66:], 1) // Version
		le.PutUint32(h[68:], synthLogLength)
		le.PutUint64(h[72:], synthLogOffset)
		le.PutUint32(h[4:], Checksum(h, 4))
		return h[:80]
	}

	rt := make([]byte, RegionTableSize)
	copy(rt, SigRegion)
	le.PutUint32(rt[8:], 2)
	putRegion := func(at int, g vdisk.GUID, off, length int64) {
		m := g.Mixed()
		copy(rt[at:], m[:])
		le.PutUint64(rt[at+16:], uint64(off))
		le.PutUint32(rt[at+24:], uint32(length))
		le.PutUint32(rt[at+28:], 1) // Required, as the spec says for both
	}
	putRegion(16, RegionBAT, synthBATOffset, l.batLength)
	putRegion(48, RegionMetadata, l.metaOffset, synthMetadataLength)
	le.PutUint32(rt[4:], Checksum(rt, 4))
	rt = rt[:80]

	// Metadata table and items, laid out as qemu does (VHDX-NOTES 1.5).
	const (
		flagVirtualDisk = 0x2
		flagRequired    = 0x4
	)
	items := make([]byte, 0x28)
	mt := metadataTable([]metaItem{
		{MetaFileParameters, 0x00, 8, flagRequired},
		{MetaVirtualSize, 0x08, 8, flagVirtualDisk | flagRequired},
		{MetaDiskID, 0x10, 16, flagVirtualDisk | flagRequired},
		{MetaLogicalSector, 0x20, 4, flagVirtualDisk | flagRequired},
		{MetaPhysicalSector, 0x24, 4, flagVirtualDisk | flagRequired},
	})
	le.PutUint32(items[0x00:], uint32(l.blockSize))
	le.PutUint32(items[0x04:], 0) // not fixed, no parent
	le.PutUint64(items[0x08:], uint64(id.VirtualSize))
	did := id.DiskID.Mixed()
	copy(items[0x10:], did[:])
	le.PutUint32(items[0x20:], id.LogicalSectorSize)
	le.PutUint32(items[0x24:], id.PhysicalSectorSize)

	return []synthSeg{
		{0, ident},
		{Header1Offset, header(1)},
		{Header2Offset, header(2)},
		{RegionTable1Off, rt},
		{RegionTable2Off, rt},
		{l.metaOffset, mt},
		{l.metaOffset + synthMetaItemsOffset, items},
	}
}

// Size is the length of the synthesized VHDX file.
func (s *Synth) Size() int64 { return s.lay.size }

// Identity returns the facts the file carries: the input identity with the
// chosen block size, sector sizes, rounded virtual size and any derived
// GUIDs filled in.
func (s *Synth) Identity() vdisk.Identity { return s.id }

// PayloadMap lists where the stored blocks live: runs of consecutive
// virtual blocks in ascending disk order, each stored contiguously.
func (s *Synth) PayloadMap() []SynthRun {
	out := make([]SynthRun, len(s.runs))
	for i, r := range s.runs {
		out[i] = SynthRun{
			FileOffset: s.lay.payloadOffset + r.fileIdx*s.lay.blockSize,
			DiskOffset: r.vblock * s.lay.blockSize,
			Blocks:     r.count,
		}
	}
	return out
}

// ReadAt reads the synthesized file like os.File.ReadAt: io.EOF when fewer
// than len(p) bytes remain. Payload bytes come from the source; a short or
// failed source read is an error, never silent zeros.
func (s *Synth) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vhdx: synth read at offset %d: %w", off, fs.ErrInvalid)
	}
	n := 0
	for n < len(p) {
		reg, end := s.lay.region(off)
		if reg == synthRegEOF {
			return n, io.EOF
		}
		m := int64(len(p) - n)
		if end-off < m {
			m = end - off
		}
		chunk := p[n : n+int(m)]
		switch reg {
		case synthRegHeader, synthRegMetadata:
			synthFillStatic(chunk, off, s.static)
		case synthRegLog:
			clear(chunk)
		case synthRegBAT:
			s.fillBAT(chunk, off-synthBATOffset)
		case synthRegPayload:
			if err := s.readPayload(chunk, off); err != nil {
				return n, err
			}
		}
		n += len(chunk)
		off += m
	}
	return n, nil
}

// Lender is an optional interface of a Synth's source: a source that keeps
// its bytes in memory anyway (the mount's block cache) lends them instead of
// copying them, and LendAt then lends payload ranges of the file the same
// way, so a FUSE reply of the .vhdx is written from the source's memory.
//
// LendAt returns read-only slices that together hold the n bytes at off,
// valid until done is called; ok false means the source cannot lend that
// range and the caller should ReadAt it. Bytes outside the allocation map
// given to NewSynth must lend as zeros, as a disk reads its holes.
type Lender interface {
	LendAt(off int64, n int) (bufs [][]byte, done func(), ok bool)
}

// synthZeros is lent for payload ranges outside the allocation (never
// written; an array so that it costs no memory until it is read).
var synthZeros [MiB]byte

// LendAt implements Lender for payload ranges when the source is a Lender:
// a sequential reader of the file (dd, qemu-img convert through a mount)
// spends nearly all its bytes there. The header section, BAT and metadata
// (the first few MiB) are generated, so ok is false for them.
func (s *Synth) LendAt(off int64, n int) (bufs [][]byte, done func(), ok bool) {
	src, isLender := s.src.(Lender)
	if !isLender || n <= 0 || off < s.lay.payloadOffset || off > s.lay.size-int64(n) {
		return nil, nil, false
	}
	var dones []func()
	release := func() {
		for _, d := range dones {
			d()
		}
	}
	zeros := func(m int64) {
		for ; m > 0; m -= int64(len(synthZeros)) {
			bufs = append(bufs, synthZeros[:min(m, int64(len(synthZeros)))])
		}
	}
	for end := off + int64(n); off < end; {
		disk, left, _ := synthSourceOffset(s.lay, s.runs, off)
		m := min(end-off, left)
		off += m
		// Past the source (the last block's padding) the file is zeros.
		pad := max(0, min(m, disk+m-s.srcSize))
		m -= pad
		i := sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End() > disk })
		if m > 0 && i < len(s.ext) && s.ext[i].Off < disk+m {
			b, d, ok := src.LendAt(disk, int(m))
			if !ok {
				release()
				return nil, nil, false
			}
			bufs = append(bufs, b...)
			dones = append(dones, d)
		} else {
			zeros(m) // a hole
		}
		zeros(pad)
	}
	switch len(dones) {
	case 0:
		return bufs, func() {}, true
	case 1:
		return bufs, dones[0], true
	}
	return bufs, release, true
}

// synthFillStatic writes the bytes of [off, off+len(p)) given the sparse
// segments.
func synthFillStatic(p []byte, off int64, segs []synthSeg) {
	clear(p)
	end := off + int64(len(p))
	for _, sg := range segs {
		sEnd := sg.off + int64(len(sg.data))
		if sEnd <= off || sg.off >= end {
			continue
		}
		if sg.off >= off {
			copy(p[sg.off-off:], sg.data)
		} else {
			copy(p, sg.data[off-sg.off:])
		}
	}
}

// fillBAT writes BAT bytes [rel, rel+len(p)) relative to the BAT offset. The
// BAT is never stored: entries are zero (NOT_PRESENT, and SB entries are
// always 0 in a dynamic file) except those of allocated blocks, which are
// found through the runs. Memory stays proportional to the runs, not to the
// virtual size.
func (s *Synth) fillBAT(p []byte, rel int64) {
	clear(p)
	l := s.lay
	end := rel + int64(len(p))
	if end > l.batEntries*8 {
		end = l.batEntries * 8
	}
	if rel >= end {
		return
	}
	cr1 := l.chunkRatio + 1
	i0, i1 := rel/8, (end-1)/8 // inclusive entry range
	b0 := i0 - i0/cr1          // first block whose index is >= i0
	b1 := i1 - i1/cr1          // last block whose index could be <= i1
	j := sort.Search(len(s.runs), func(j int) bool { return s.runs[j].vblock+s.runs[j].count > b0 })
	var e [8]byte
	for ; j < len(s.runs) && s.runs[j].vblock <= b1; j++ {
		r := s.runs[j]
		from, to := max(r.vblock, b0), min(r.vblock+r.count-1, b1)
		for b := from; b <= to; b++ {
			i := BATIndex(b, l.chunkRatio)
			if i < i0 || i > i1 {
				continue
			}
			fo := l.payloadOffset + (r.fileIdx+b-r.vblock)*l.blockSize
			binary.LittleEndian.PutUint64(e[:], uint64(fo)|PayloadFullyPresent)
			pos := i*8 - rel
			if pos < 0 {
				copy(p, e[-pos:])
			} else {
				copy(p[pos:], e[:])
			}
		}
	}
}

// readPayload fills p with payload bytes starting at file offset off; p
// lies inside the payload region.
func (s *Synth) readPayload(p []byte, off int64) error {
	for len(p) > 0 {
		disk, left, _ := synthSourceOffset(s.lay, s.runs, off)
		m := int64(len(p))
		if left < m {
			m = left
		}
		if err := s.readDisk(p[:m], disk); err != nil {
			return err
		}
		p = p[m:]
		off += m
	}
	return nil
}

// readDisk fills p with the virtual disk's bytes at v: source bytes inside
// the allocation, zeros outside it (including the padding past the size).
func (s *Synth) readDisk(p []byte, v int64) error {
	ext := s.ext
	i := sort.Search(len(ext), func(i int) bool { return ext[i].End() > v })
	for len(p) > 0 {
		if i >= len(ext) || ext[i].Off >= v+int64(len(p)) {
			clear(p)
			return nil
		}
		e := ext[i]
		if e.Off > v {
			z := e.Off - v
			clear(p[:z])
			p = p[z:]
			v += z
		}
		m := int64(len(p))
		if r := e.End() - v; r < m {
			m = r
		}
		if err := synthReadSource(s.src, p[:m], v); err != nil {
			return err
		}
		p = p[m:]
		v += m
		i++
	}
	return nil
}

// synthReadSource reads exactly len(p) bytes at off. The allocation says the
// bytes exist, so running out early is io.ErrUnexpectedEOF, not zeros.
func synthReadSource(src io.ReaderAt, p []byte, off int64) error {
	n := 0
	for n < len(p) {
		m, err := src.ReadAt(p[n:], off+int64(n))
		n += m
		if n == len(p) {
			return nil // io.EOF with a full buffer is fine
		}
		if err == nil && m == 0 {
			err = io.ErrNoProgress
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("vhdx: read source at %d: got %d of %d bytes: %w", off, n, len(p), err)
		}
		// n < len(p) with a nil error breaks the io.ReaderAt contract;
		// tolerate it by reading the rest.
	}
	return nil
}

// metaItem is one entry of a metadata table: the item's GUID, its offset
// in the items area (from synthMetaItemsOffset), length and flags.
type metaItem struct {
	g      vdisk.GUID
	off    int
	length int
	flags  uint32
}

// metadataTable builds the metadata table (header and entries) of list.
func metadataTable(list []metaItem) []byte {
	le := binary.LittleEndian
	mt := make([]byte, 32+32*len(list))
	copy(mt, SigMetadata)
	le.PutUint16(mt[10:], uint16(len(list)))
	for i, it := range list {
		e := mt[32+32*i:]
		m := it.g.Mixed()
		copy(e, m[:])
		le.PutUint32(e[16:], uint32(synthMetaItemsOffset+it.off))
		le.PutUint32(e[20:], uint32(it.length))
		le.PutUint32(e[24:], it.flags)
	}
	return mt
}
