package vhdx

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Disk is an opened VHDX file with its parent chain resolved. It implements
// vdisk.Disk; ReadAt is safe for concurrent use and takes no locks.
type Disk struct {
	layers    []*rdLayer // [0] is the file that was opened, then its parents
	closers   []io.Closer
	id        vdisk.Identity
	info      *Info
	allocOnce sync.Once
	alloc     []vdisk.Extent
}

var _ vdisk.Disk = (*Disk)(nil)

// rdLayer is one file of a chain, ready for reads.
type rdLayer struct {
	name     string
	r        io.ReaderAt
	meta     *rdMetaReader
	g        rdGeometry
	bsShift  uint
	bat      []uint64
	info     *Info
	dataGUID vdisk.GUID
	// host lists the file ranges that hold host data (SEEK_DATA/SEEK_HOLE,
	// found once at open) when hostKnown; ranges outside it are holes and
	// read as zeros. Only Allocated uses it, never ReadAt.
	host      []vdisk.Extent
	hostKnown bool
}

func newLayer(name string, r io.ReaderAt, info *Info, p *rdParsed) *rdLayer {
	return &rdLayer{
		name:     name,
		r:        r,
		meta:     p.meta,
		g:        p.geo,
		bsShift:  uint(bits.TrailingZeros64(uint64(p.geo.bs))),
		bat:      p.bat,
		info:     info,
		dataGUID: p.hdr.DataWriteGUID,
	}
}

// entry returns the BAT entry of payload block b.
func (l *rdLayer) entry(b int64) uint64 { return l.bat[b+b/l.g.cr] }

// pread reads payload bytes at file offset fo. Bytes past the real end of
// the file read as zeros only when a replayed log extended the file
// (LastFileOffset); otherwise a short read is an error.
func (l *rdLayer) pread(p []byte, fo int64) error {
	n, err := l.r.ReadAt(p, fo)
	if n == len(p) {
		return nil
	}
	if (err == nil || errors.Is(err, io.EOF)) && l.meta.effSize > l.meta.fileSize && fo+int64(n) >= l.meta.fileSize {
		clear(p[n:])
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("vhdx: read %s at %d: %w", l.name, fo, err)
}

// Size is the virtual disk size in bytes.
func (d *Disk) Size() int64 { return d.layers[0].g.vsize }

// Identity returns the identity facts of the opened (top) file.
func (d *Disk) Identity() vdisk.Identity { return d.id }

// Info returns what parsing the opened (top) file found.
func (d *Disk) Info() *Info { return d.info }

// Close closes the parents Open or OpenFile opened, and the file itself
// when Open opened it.
func (d *Disk) Close() error {
	var errs []error
	for _, c := range d.closers {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.closers = nil
	return errors.Join(errs...)
}

// ReadAt reads guest-visible bytes. Like a file, a read that reaches past
// Size returns the bytes before it and io.EOF.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("vhdx: negative offset")
	}
	size := d.Size()
	if off >= size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > size-off {
		p, eof = p[:size-off], io.EOF
	}
	if err := d.readLayer(0, p, off); err != nil {
		return 0, err
	}
	return len(p), eof
}

// readLayer fills p from layer i of the chain. It splits the request at
// block boundaries but merges neighbouring blocks of the same kind, so a
// physically contiguous run of present blocks costs one pread and a run of
// empty blocks one clear.
func (d *Disk) readLayer(i int, p []byte, off int64) error {
	l := d.layers[i]
	hasParent := i+1 < len(d.layers)
	for len(p) > 0 {
		if off >= l.g.vsize {
			// A parent smaller than its child: the rest reads as zeros.
			clear(p)
			return nil
		}
		b := off >> l.bsShift
		e := l.entry(b)
		st := batState(e)
		n := min(int64(len(p)), l.g.bs-(off&(l.g.bs-1)), l.g.vsize-off)
		switch {
		case st == PayloadFullyPresent:
			fo := batOffset(e) + off&(l.g.bs-1)
			for n < int64(len(p)) && off+n < l.g.vsize {
				ne := l.entry((off + n) >> l.bsShift)
				if batState(ne) != PayloadFullyPresent || batOffset(ne) != fo+n {
					break
				}
				n += min(l.g.bs, int64(len(p))-n, l.g.vsize-off-n)
			}
			if err := l.pread(p[:n], fo); err != nil {
				return err
			}
		case st == PayloadPartiallyPresent:
			if err := d.readPartial(i, p[:n], off, e); err != nil {
				return err
			}
		case st == PayloadNotPresent && hasParent:
			n = l.extendRun(p, off, n, func(s uint8) bool { return s == PayloadNotPresent })
			if err := d.readLayer(i+1, p[:n], off); err != nil {
				return err
			}
		default:
			// NOT_PRESENT at the base, UNDEFINED, ZERO and UNMAPPED read as zeros.
			n = l.extendRun(p, off, n, func(s uint8) bool {
				return s != PayloadFullyPresent && s != PayloadPartiallyPresent && (s != PayloadNotPresent || !hasParent)
			})
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// extendRun grows the first n bytes of a request at off over following
// whole blocks whose state satisfies same.
func (l *rdLayer) extendRun(p []byte, off, n int64, same func(uint8) bool) int64 {
	for n < int64(len(p)) && off+n < l.g.vsize && same(batState(l.entry((off+n)>>l.bsShift))) {
		n += min(l.g.bs, int64(len(p))-n, l.g.vsize-off-n)
	}
	return n
}

// rdSectorsPerChunk is the number of sectors one sector-bitmap block covers.
const rdSectorsPerChunk = 1 << 23

// readPartial fills p (inside one PARTIALLY_PRESENT block of layer i) sector
// by sector: a set bitmap bit reads this file, a clear one the parent. Only
// the bitmap bytes for the requested sectors are read, so no bitmap cache
// (and no lock) is needed.
func (d *Disk) readPartial(i int, p []byte, off int64, e uint64) error {
	l := d.layers[i]
	hasParent := i+1 < len(d.layers)
	lss := l.g.lss
	b := off >> l.bsShift
	sb := l.bat[SBIndex(b/l.g.cr, l.g.cr)]
	first := (off / lss) % rdSectorsPerChunk
	last := ((off + int64(len(p)) - 1) / lss) % rdSectorsPerChunk
	bm := make([]byte, last/8-first/8+1)
	if err := l.meta.read(bm, batOffset(sb)+first/8); err != nil {
		return rdWrap(fmt.Sprintf("bat: read sector bitmap of block %d", b), err)
	}
	base := first &^ 7
	bit := func(pos int64) bool {
		k := ((off+pos)/lss)%rdSectorsPerChunk - base
		return bm[k/8]>>(k%8)&1 == 1
	}
	for pos := int64(0); pos < int64(len(p)); {
		v := bit(pos)
		end := pos
		for end < int64(len(p)) && bit(end) == v {
			end = min(((off+end)/lss+1)*lss-off, int64(len(p)))
		}
		var err error
		switch {
		case v:
			err = l.pread(p[pos:end], batOffset(e)+(off+pos)&(l.g.bs-1))
		case hasParent:
			err = d.readLayer(i+1, p[pos:end], off+pos)
		default:
			clear(p[pos:end])
		}
		if err != nil {
			return err
		}
		pos = end
	}
	return nil
}
