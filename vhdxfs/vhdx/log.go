package vhdx

import (
	"encoding/binary"
	"hash/crc32"
	"io"
	"sort"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Log replay (MS-VHDX 2.3.3), done in memory: the file is never written.
// The replayed sectors form an overlay consulted by every metadata-level
// read (region tables, metadata, BAT, sector bitmaps); payload data is never
// logged, so the data path does not look at it.

const (
	rdLogSector = 4096
	// rdMaxLog bounds the log we are willing to load. Hyper-V and qemu
	// write 1 MiB logs; the bound keeps hostile headers from making us read
	// and hold gigabytes.
	rdMaxLog = 64 * MiB
	// rdMaxFileOffset bounds offsets named by log entries (4 PiB), far
	// above any real file yet safe from int64 overflow in offset math.
	rdMaxFileOffset = 1 << 52
)

// LogInfo describes the log replay that Open performed.
type LogInfo struct {
	Replayed          bool
	Entries           int    // entries applied (tail to head)
	HeadSequence      uint64 // sequence number of the head entry
	FlushedFileOffset uint64
	LastFileOffset    uint64
	Sectors           int // 4 KiB sectors held in the overlay
}

// rdOverlay is the in-memory result of a replay: whole 4 KiB sectors keyed
// by file offset, plus zeroed ranges. A data descriptor applied after a zero
// descriptor lands in the map and wins because the map is consulted first;
// a zero descriptor deletes earlier map entries it covers.
type rdOverlay struct {
	sectors map[int64]*[rdLogSector]byte
	zeros   []rdSpan
	work    int64 // sectors visited by putZero; bounded against hostile logs
}

// rdMaxReplayWork bounds the map work of zero descriptors (a real log
// performs a few thousand steps at most).
const rdMaxReplayWork = 1 << 26

func (o *rdOverlay) putData(off int64, b *[rdLogSector]byte) { o.sectors[off] = b }

func (o *rdOverlay) putZero(off, n int64) error {
	if n/rdLogSector < int64(len(o.sectors)) {
		o.work += n / rdLogSector
		for k := off; k < off+n; k += rdLogSector {
			delete(o.sectors, k)
		}
	} else {
		o.work += int64(len(o.sectors))
		for k := range o.sectors {
			if k >= off && k < off+n {
				delete(o.sectors, k)
			}
		}
	}
	if o.work > rdMaxReplayWork {
		return rdCorrupt("log: too many zero descriptors")
	}
	o.zeros = append(o.zeros, rdSpan{uint64(off), uint64(off + n), "zero"})
	return nil
}

// apply overlays p (read from the file at off) with the replayed state.
func (o *rdOverlay) apply(p []byte, off int64) {
	if o == nil || len(p) == 0 {
		return
	}
	end := off + int64(len(p))
	i := sort.Search(len(o.zeros), func(i int) bool { return int64(o.zeros[i].end) > off })
	for ; i < len(o.zeros) && int64(o.zeros[i].off) < end; i++ {
		lo, hi := max(int64(o.zeros[i].off), off), min(int64(o.zeros[i].end), end)
		clear(p[lo-off : hi-off])
	}
	// Walk the sectors touched by p; the map is small (bounded by the log).
	if int64(len(o.sectors)) < (end-off)/rdLogSector {
		for k, s := range o.sectors {
			rdCopySector(p, off, k, s)
		}
		return
	}
	for k := off &^ (rdLogSector - 1); k < end; k += rdLogSector {
		if s, ok := o.sectors[k]; ok {
			rdCopySector(p, off, k, s)
		}
	}
}

// rdCopySector copies the part of sector s (at file offset k) that falls
// inside p (at file offset off).
func rdCopySector(p []byte, off, k int64, s *[rdLogSector]byte) {
	lo, hi := max(k, off), min(k+rdLogSector, off+int64(len(p)))
	if lo < hi {
		copy(p[lo-off:hi-off], s[lo-k:hi-k])
	}
}

// rdLogDesc is one descriptor of a log entry.
type rdLogDesc struct {
	zero     bool
	fileOff  int64
	zeroLen  int64
	leading  [8]byte
	trailing [4]byte
}

// rdLogEntry is a validated entry header with its descriptors.
type rdLogEntry struct {
	off, length int64 // position in the log ring
	tail        int64
	seq         uint64
	flushed     uint64
	last        uint64
	descs       []rdLogDesc
	dataSectors []int64 // ring offsets of the data sectors, one per data descriptor
}

// rdLogRing reads a loaded log as a ring of 4 KiB sectors.
type rdLogRing struct {
	buf    []byte
	guid   vdisk.GUID
	budget int64 // bytes we may still checksum; bounds work on hostile logs
	memo   map[int64]*rdLogEntry
}

func (r *rdLogRing) sector(off int64) []byte {
	off %= int64(len(r.buf))
	return r.buf[off : off+rdLogSector]
}

// entryAt returns the valid entry starting at ring offset off, or nil
// (MS-VHDX 2.3.1: signature, length, sequence, LogGuid, checksum,
// descriptor and data-sector consistency).
func (r *rdLogRing) entryAt(off int64) (*rdLogEntry, error) {
	if e, ok := r.memo[off]; ok {
		return e, nil
	}
	e, err := r.parseEntry(off)
	r.memo[off] = e
	return e, err
}

func (r *rdLogRing) parseEntry(off int64) (*rdLogEntry, error) {
	le := binary.LittleEndian
	h := r.sector(off)
	L := int64(len(r.buf))
	if string(h[:4]) != SigLogEntry {
		return nil, nil
	}
	e := &rdLogEntry{
		off:     off,
		length:  int64(le.Uint32(h[8:])),
		tail:    int64(le.Uint32(h[12:])),
		seq:     le.Uint64(h[16:]),
		flushed: le.Uint64(h[48:]),
		last:    le.Uint64(h[56:]),
	}
	dc := int64(le.Uint32(h[24:]))
	if e.length < rdLogSector || e.length%rdLogSector != 0 || e.length > L ||
		e.tail%rdLogSector != 0 || e.tail >= L || e.seq == 0 ||
		vdisk.GUIDFromMixed(h[32:48]) != r.guid {
		return nil, nil
	}
	nsec := e.length / rdLogSector
	descSectors := (dc + 2 + 127) / 128 // the header takes the first two slots
	if descSectors > nsec {
		return nil, nil
	}
	r.budget -= e.length
	if r.budget < 0 {
		return nil, rdCorrupt("log: too many damaged entries to search")
	}
	c := crc32.Update(0, castagnoli, h[:4])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, h[8:])
	for i := int64(1); i < nsec; i++ {
		c = crc32.Update(c, castagnoli, r.sector(off+i*rdLogSector))
	}
	if c != le.Uint32(h[4:]) {
		return nil, nil
	}
	data := off + descSectors*rdLogSector
	for i := range dc {
		slot := i + 2
		d := r.sector(off + slot/128*rdLogSector)[slot%128*32:][:32]
		if le.Uint64(d[24:]) != e.seq {
			return nil, nil
		}
		fo := le.Uint64(d[16:])
		switch string(d[:4]) {
		case SigLogZero:
			n := le.Uint64(d[8:])
			if fo%rdLogSector != 0 || n%rdLogSector != 0 || fo > rdMaxFileOffset || n > rdMaxFileOffset {
				return nil, nil
			}
			e.descs = append(e.descs, rdLogDesc{zero: true, fileOff: int64(fo), zeroLen: int64(n)})
		case SigLogDesc:
			if fo%rdLogSector != 0 || fo > rdMaxFileOffset || int64(len(e.dataSectors))+descSectors >= nsec {
				return nil, nil
			}
			ds := r.sector(data)
			if string(ds[:4]) != SigLogData || le.Uint32(ds[4:]) != uint32(e.seq>>32) || le.Uint32(ds[4092:]) != uint32(e.seq) {
				return nil, nil
			}
			var x rdLogDesc
			x.fileOff = int64(fo)
			copy(x.trailing[:], d[4:8])
			copy(x.leading[:], d[8:16])
			e.descs = append(e.descs, x)
			e.dataSectors = append(e.dataSectors, data)
			data += rdLogSector
		default:
			return nil, nil
		}
	}
	return e, nil
}

// activeSequence finds the active sequence (MS-VHDX 2.3.3): runs of valid
// entries laid end to end with consecutive sequence numbers; a run is a
// candidate when its head's Tail names one of its entries, and the
// candidate with the highest head sequence number wins. It returns the
// entries from the tail to the head.
func (r *rdLogRing) activeSequence() ([]*rdLogEntry, error) {
	L := int64(len(r.buf))
	var best []*rdLogEntry
	for off := int64(0); off < L; {
		e, err := r.entryAt(off)
		if err != nil {
			return nil, err
		}
		if e == nil {
			off += rdLogSector
			continue
		}
		run := []*rdLogEntry{e}
		used := e.length
		for used < L {
			n, err := r.entryAt((off + used) % L)
			if err != nil {
				return nil, err
			}
			if n == nil || n.seq != run[len(run)-1].seq+1 || used+n.length > L {
				break
			}
			run = append(run, n)
			used += n.length
		}
		head := run[len(run)-1]
		for i, x := range run {
			if x.off == head.tail {
				if best == nil || head.seq > best[len(best)-1].seq {
					best = run[i:]
				}
				break
			}
		}
		// Continue where the run broke; a run that wrapped has seen the rest.
		off += used
	}
	if best == nil {
		return nil, rdCorrupt("log: LogGuid is set but no valid active sequence was found")
	}
	return best, nil
}

// replayLog loads the log of the current header h and replays its active
// sequence into an overlay. It returns a nil overlay when no replay is due
// (LogGuid zero, or an empty log, as qemu does).
func replayLog(r io.ReaderAt, fileSize int64, h HeaderInfo) (*rdOverlay, LogInfo, error) {
	var info LogInfo
	if h.LogGUID.IsZero() || h.LogLength == 0 {
		return nil, info, nil
	}
	if h.LogVersion != 0 {
		return nil, info, rdCorrupt("log: unsupported log version %d", h.LogVersion)
	}
	if h.LogLength > rdMaxLog {
		return nil, info, rdCorrupt("log: length %d exceeds the supported %d", h.LogLength, rdMaxLog)
	}
	buf := make([]byte, h.LogLength)
	if err := rdReadFull(r, buf, int64(h.LogOffset)); err != nil {
		return nil, info, rdWrap("log: read", err)
	}
	ring := &rdLogRing{buf: buf, guid: h.LogGUID, budget: 8*int64(len(buf)) + 4*MiB, memo: map[int64]*rdLogEntry{}}
	seq, err := ring.activeSequence()
	if err != nil {
		return nil, info, err
	}
	head := seq[len(seq)-1]
	if head.flushed > uint64(fileSize) {
		return nil, info, rdCorrupt("log: file is truncated: %d bytes but the log's flushed file offset is %d", fileSize, head.flushed)
	}
	if head.last > rdMaxFileOffset {
		return nil, info, rdCorrupt("log: last file offset %d is implausible", head.last)
	}
	ov := &rdOverlay{sectors: map[int64]*[rdLogSector]byte{}}
	for _, e := range seq {
		di := 0
		for _, d := range e.descs {
			if d.zero {
				if err := ov.putZero(d.fileOff, d.zeroLen); err != nil {
					return nil, info, err
				}
				continue
			}
			var s [rdLogSector]byte
			copy(s[:8], d.leading[:])
			copy(s[8:4092], ring.sector(e.dataSectors[di])[8:4092])
			copy(s[4092:], d.trailing[:])
			ov.putData(d.fileOff, &s)
			di++
		}
	}
	ov.zeros = rdMergeSpans(ov.zeros)
	info = LogInfo{Replayed: true, Entries: len(seq), HeadSequence: head.seq,
		FlushedFileOffset: head.flushed, LastFileOffset: head.last, Sectors: len(ov.sectors)}
	return ov, info, nil
}

// rdMergeSpans sorts spans and merges overlapping or adjacent ones, so that
// lookups can binary-search them.
func rdMergeSpans(s []rdSpan) []rdSpan {
	sort.Slice(s, func(i, j int) bool { return s[i].off < s[j].off })
	out := s[:0]
	for _, z := range s {
		if n := len(out); n > 0 && z.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, z.end)
			continue
		}
		out = append(out, z)
	}
	return out
}
