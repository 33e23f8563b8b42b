package vhdx

import (
	"errors"
	"fmt"
	"io"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// rdError is a structural error: its message names the structure and it
// unwraps to vdisk.ErrCorrupt (and to the underlying error, if any).
type rdError struct {
	msg string
	err error
}

func (e *rdError) Error() string {
	if e.err != nil {
		return "vhdx: " + e.msg + ": " + e.err.Error()
	}
	return "vhdx: " + e.msg
}

func (e *rdError) Unwrap() []error {
	if e.err != nil {
		return []error{vdisk.ErrCorrupt, e.err}
	}
	return []error{vdisk.ErrCorrupt}
}

// rdCorrupt builds a structural error; the message must start with the
// structure's name ("header: ...", "bat: ...").
func rdCorrupt(format string, a ...any) error {
	return &rdError{msg: fmt.Sprintf(format, a...)}
}

// rdWrap wraps an I/O error met while reading a structure. A short read
// (io.EOF) means the file is truncated, which is corruption; other errors are
// passed through without the ErrCorrupt mark.
func rdWrap(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &rdError{msg: what, err: io.ErrUnexpectedEOF}
	}
	return fmt.Errorf("vhdx: %s: %w", what, err)
}

// rdReadFull reads len(p) bytes at off; a short read returns io.ErrUnexpectedEOF.
func rdReadFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// rdMetaReader performs metadata-level reads (region tables, metadata, BAT,
// sector bitmaps): the file bytes with the replayed log laid over them. A
// replayed log may extend the file (LastFileOffset); bytes past the real
// end and below effSize read as zeros.
type rdMetaReader struct {
	r        io.ReaderAt
	fileSize int64 // real size
	effSize  int64 // size after replay
	ov       *rdOverlay
}

func (m *rdMetaReader) read(p []byte, off int64) error {
	if off < 0 || off > m.effSize || int64(len(p)) > m.effSize-off {
		return io.ErrUnexpectedEOF
	}
	n := int64(len(p))
	if off < m.fileSize {
		k := min(n, m.fileSize-off)
		if err := rdReadFull(m.r, p[:k], off); err != nil {
			return err
		}
		clear(p[k:])
	} else {
		clear(p)
	}
	m.ov.apply(p, off)
	return nil
}

// Info is everything Inspect learns about one VHDX file without opening its
// parents. Fields after the first error stay zero.
type Info struct {
	FileSize      int64
	Creator       string
	Headers       [2]HeaderInfo
	CurrentHeader int // 0 or 1
	Log           LogInfo
	RegionTable   int // region table copy used: 1 or 2
	Regions       []RegionEntry
	BATRegion     RegionEntry
	MetaRegion    RegionEntry
	Metadata      *Metadata
	ChunkRatio    int64
	PayloadBlocks int64
	BAT           BATCounts
}

// Inspect parses the headers, log, region tables, metadata and BAT of one
// VHDX file and returns what it found, without resolving parents. On error
// the partial Info is returned as well.
func Inspect(r io.ReaderAt, size int64) (*Info, error) {
	info, _, err := parseFile(r, size)
	return info, err
}

// rdParsed is what Open needs beyond Info.
type rdParsed struct {
	meta *rdMetaReader
	geo  rdGeometry
	bat  []uint64
	hdr  HeaderInfo
}

// parseFile runs the whole open sequence of one file: header section, log
// replay, region tables, metadata, BAT.
func parseFile(r io.ReaderAt, size int64) (*Info, *rdParsed, error) {
	info := &Info{FileSize: size}
	if size < HeaderSectionSize {
		return info, nil, rdCorrupt("file: %d bytes is smaller than the 1 MiB header section", size)
	}
	head := make([]byte, RegionTable2Off+RegionTableSize) // id, headers, both region tables
	if err := rdReadFull(r, head, 0); err != nil {
		return info, nil, rdWrap("header: read", err)
	}
	if string(head[:8]) != SigFile {
		return info, nil, rdCorrupt("file: bad signature (not a VHDX file)")
	}
	info.Creator = rdCreator(head[8:520])
	raw := [2][]byte{head[Header1Offset : Header1Offset+HeaderSize], head[Header2Offset : Header2Offset+HeaderSize]}
	info.Headers = [2]HeaderInfo{parseHeader(raw[0]), parseHeader(raw[1])}
	cur, err := selectHeader(info.Headers, raw)
	if err != nil {
		return info, nil, err
	}
	info.CurrentHeader = cur
	h := info.Headers[cur]
	if err := checkLogPlacement(h, size); err != nil {
		return info, nil, err
	}
	ov, linfo, err := replayLog(r, size, h)
	info.Log = linfo
	if err != nil {
		return info, nil, err
	}
	mr := &rdMetaReader{r: r, fileSize: size, effSize: max(size, int64(linfo.LastFileOffset)), ov: ov}
	used, err := readRegions(info, mr, head, h)
	if err != nil {
		return info, nil, err
	}
	if info.Metadata, err = readMetadata(mr, info.MetaRegion); err != nil {
		return info, nil, err
	}
	g := newGeometry(info.Metadata)
	info.ChunkRatio, info.PayloadBlocks = g.cr, g.nb
	bat, err := loadBAT(mr, info.BATRegion, g)
	if err != nil {
		return info, nil, err
	}
	if info.BAT, err = checkBAT(bat, g, mr.effSize, used); err != nil {
		return info, nil, err
	}
	return info, &rdParsed{meta: mr, geo: g, bat: bat, hdr: h}, nil
}

// readRegions parses region table copy 1, falling back to copy 2 when copy
// 1 is damaged (qemu reads only copy 1). With a replayed log the tables are
// read again through the overlay, since the log may have rewritten them. It
// returns the file spans occupied by the log and every region.
func readRegions(info *Info, mr *rdMetaReader, head []byte, h HeaderInfo) ([]rdSpan, error) {
	var logSpan rdSpan
	if h.LogLength > 0 {
		logSpan = rdSpan{h.LogOffset, h.LogOffset + uint64(h.LogLength), "log"}
	}
	var firstErr error
	for i, off := range []int64{RegionTable1Off, RegionTable2Off} {
		buf := head[off : off+RegionTableSize]
		if mr.ov != nil {
			buf = make([]byte, RegionTableSize)
			if err := mr.read(buf, off); err != nil {
				return nil, rdWrap("region table: read", err)
			}
		}
		entries, err := parseRegionTable(buf)
		if err == nil {
			info.BATRegion, info.MetaRegion, err = pickRegions(entries, mr.effSize, logSpan)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		info.RegionTable, info.Regions = i+1, entries
		used := []rdSpan{}
		if h.LogLength > 0 {
			used = append(used, logSpan)
		}
		for _, e := range entries {
			used = append(used, rdSpan{e.FileOffset, e.FileOffset + uint64(e.Length), rdRegionName(e.GUID)})
		}
		return used, nil
	}
	return nil, firstErr
}

func rdRegionName(g vdisk.GUID) string {
	switch g {
	case RegionBAT:
		return "BAT"
	case RegionMetadata:
		return "metadata"
	}
	return g.String()
}

// readMetadata reads the metadata table and the items it points at.
func readMetadata(mr *rdMetaReader, region RegionEntry) (*Metadata, error) {
	if region.Length < rdMetaTableSize {
		return nil, rdCorrupt("metadata: region of %d bytes is too small", region.Length)
	}
	table := make([]byte, rdMetaTableSize)
	if err := mr.read(table, int64(region.FileOffset)); err != nil {
		return nil, rdWrap("metadata: read table", err)
	}
	items, err := parseMetadataTable(table, region.Length)
	if err != nil {
		return nil, err
	}
	return decodeMetadata(items, func(it MetadataItem) ([]byte, error) {
		b := make([]byte, it.Length) // ≤ 1 MiB, checked by parseMetadataTable
		if err := mr.read(b, int64(region.FileOffset)+int64(it.Offset)); err != nil {
			return nil, rdWrap("metadata: read item "+it.ID.String(), err)
		}
		return b, nil
	})
}

// rdCreator decodes the optional UTF-16LE creator string of the file identifier.
func rdCreator(b []byte) string {
	for i := 0; i+1 < len(b); i += 2 {
		if b[i] == 0 && b[i+1] == 0 {
			b = b[:i]
			break
		}
	}
	s, err := rdUTF16At(append([]byte{0, 0}, b...), 2, uint16(len(b)&^1))
	if err != nil {
		return ""
	}
	return s
}
