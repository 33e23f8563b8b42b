package guest

// FAT12/16/32, written here rather than taken from go-diskfs v1.9.4 (which
// does have fat12/fat16/fat32 packages): its files are Read+Seek with one
// position (no concurrent ReadAt); fat32.Read allocates the whole FAT twice
// at the size the untrusted BPB claims (up to 2^32 sectors) and refuses the
// volume when FAT1 and FAT2 differ in any bit or the FSInfo sector is bad,
// so one flipped bit hides every file; FAT12/16 accept 512-byte sectors only;
// and it wants a backend.Storage rather than an io.ReaderAt. The format is
// small: a boot sector, FAT chains, 32-byte directory entries with VFAT long
// names. We read only FAT1, through a bounded page cache.
//
// Timestamps: FAT stores local wall-clock time without a zone. ModTime returns
// that wall clock as if it were UTC (10:00 on disk reads as 10:00Z), which is
// what Windows Explorer would show in the guest's own time zone.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf16"
)

const (
	fatPageSize  = 64 << 10
	fatMaxPages  = 256     // 16 MiB of cached FAT
	fatMaxDirLen = 2 << 20 // 65536 entries * 32 bytes, the FAT spec's limit
)

type fatFS struct {
	r            io.ReaderAt
	typ          string
	bps          int64
	clusterSize  int64
	fatOff       int64 // first FAT, bytes
	fatLen       int64 // bytes of one FAT
	rootOff      int64 // FAT12/16 fixed root directory, bytes
	rootLen      int64
	rootCluster  uint32 // FAT32
	dataOff      int64
	clusterCount uint32 // valid clusters are 2..clusterCount+1
	lbl          string

	mu    sync.Mutex
	pages map[int64][]byte
}

type fatGeom struct {
	typ                                string
	bps, spc, reserved, nfats, rootEnt int64
	total, fatSz                       int64
	clusters                           int64
}

func parseBPB(b []byte) (fatGeom, error) {
	var g fatGeom
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xAA {
		return g, errors.New("no 55 AA boot signature")
	}
	g.bps = int64(binary.LittleEndian.Uint16(b[11:]))
	g.spc = int64(b[13])
	g.reserved = int64(binary.LittleEndian.Uint16(b[14:]))
	g.nfats = int64(b[16])
	g.rootEnt = int64(binary.LittleEndian.Uint16(b[17:]))
	g.total = int64(binary.LittleEndian.Uint16(b[19:]))
	if g.total == 0 {
		g.total = int64(binary.LittleEndian.Uint32(b[32:]))
	}
	g.fatSz = int64(binary.LittleEndian.Uint16(b[22:]))
	if g.fatSz == 0 {
		g.fatSz = int64(binary.LittleEndian.Uint32(b[36:]))
	}
	switch g.bps {
	case 512, 1024, 2048, 4096:
	default:
		return g, fmt.Errorf("bytes per sector %d", g.bps)
	}
	if g.spc == 0 || g.spc&(g.spc-1) != 0 {
		return g, fmt.Errorf("sectors per cluster %d", g.spc)
	}
	if g.reserved == 0 || g.nfats == 0 || g.fatSz == 0 || g.total == 0 {
		return g, errors.New("zero reserved sectors, FATs, FAT size or total sectors")
	}
	media := b[21]
	if media != 0xF0 && media < 0xF8 {
		return g, fmt.Errorf("media byte %#x", media)
	}
	rootSecs := (g.rootEnt*32 + g.bps - 1) / g.bps
	first := g.reserved + g.nfats*g.fatSz + rootSecs
	if first >= g.total {
		return g, errors.New("metadata larger than the volume")
	}
	g.clusters = (g.total - first) / g.spc
	switch {
	case g.clusters < 4085:
		g.typ = "fat12"
	case g.clusters < 65525:
		g.typ = "fat16"
	default:
		g.typ = "fat32"
		if g.rootEnt != 0 {
			return g, errors.New("FAT32 with a fixed root directory")
		}
	}
	return g, nil
}

// detectFAT wants both a sane BPB and one of the type strings that every
// formatter writes, so random boot code with 55 AA is not taken for FAT.
func detectFAT(boot []byte) (string, bool) {
	if !strings.HasPrefix(string(boot[54:62]), "FAT") && !strings.HasPrefix(string(boot[82:90]), "FAT") {
		return "", false
	}
	g, err := parseBPB(boot)
	if err != nil {
		return "", false
	}
	return g.typ, true
}

func openFAT(r io.ReaderAt, size int64) (backend, error) {
	boot := make([]byte, 512)
	if _, err := r.ReadAt(boot, 0); err != nil {
		return nil, fmt.Errorf("guest: fat: read boot sector: %w", err)
	}
	g, err := parseBPB(boot)
	if err != nil {
		return nil, fmt.Errorf("guest: fat: %v: %w", err, ErrCorrupt)
	}
	f := &fatFS{
		r:           r,
		typ:         g.typ,
		bps:         g.bps,
		clusterSize: g.bps * g.spc,
		fatOff:      g.reserved * g.bps,
		fatLen:      g.fatSz * g.bps,
		pages:       make(map[int64][]byte),
	}
	f.rootOff = f.fatOff + g.nfats*f.fatLen
	f.rootLen = g.rootEnt * 32
	f.dataOff = f.rootOff + (f.rootLen+g.bps-1)/g.bps*g.bps
	// A FAT too small for the cluster count limits the usable clusters.
	var perFAT int64
	switch g.typ {
	case "fat12":
		perFAT = f.fatLen * 2 / 3
	case "fat16":
		perFAT = f.fatLen / 2
	default:
		perFAT = f.fatLen / 4
	}
	// Clusters past the end of the partition cannot hold data; capping
	// here bounds chain walks and the loop-detection bitmap by the image
	// size instead of by a forged BPB.
	inImage := (size - f.dataOff) / f.clusterSize
	cc := min(g.clusters, perFAT-2, 0x0FFFFFF5, inImage)
	if cc < 1 {
		return nil, fmt.Errorf("guest: fat: FAT has no room for clusters: %w", ErrCorrupt)
	}
	f.clusterCount = uint32(cc)
	bootSig := 38
	lblOff := 43
	if g.typ == "fat32" {
		f.rootCluster = binary.LittleEndian.Uint32(boot[44:])
		bootSig, lblOff = 66, 71
	}
	if boot[bootSig] == 0x29 {
		f.lbl = fatLabel(boot[lblOff : lblOff+11])
	}
	// The label in the root directory wins over the BPB copy, as in Windows.
	if root, err := f.root(); err == nil {
		if b, err := f.dirBytes(root); err == nil {
			if l, ok := findVolumeLabel(b); ok {
				f.lbl = l
			}
		}
	}
	return f, nil
}

func fatLabel(b []byte) string {
	l := strings.TrimRight(decodeOEM(b), " \x00")
	if l == "NO NAME" {
		return ""
	}
	return l
}

func findVolumeLabel(b []byte) (string, bool) {
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] != 0xE5 && e[11]&0x3F != 0x0F && e[11]&0x08 != 0 {
			return fatLabel(e[:11]), true
		}
	}
	return "", false
}

func (f *fatFS) kind() string  { return f.typ }
func (f *fatFS) label() string { return f.lbl }
func (f *fatFS) close() error  { return nil }

func (f *fatFS) root() (node, error) {
	n := node{info: FileInfo{Name: ".", Mode: fs.ModeDir | 0o755, Nlink: 1, Ino: 1}}
	if f.typ == "fat32" {
		n.ref = uint64(f.rootCluster)
		n.info.Ino = uint64(f.rootCluster)
	}
	return n, nil
}

// fatByte reads one byte of the first FAT through a small page cache, so that
// walking a chain costs one ReadAt per 64 KiB of FAT, not one per cluster.
func (f *fatFS) fatByte(off int64) (byte, error) {
	if off < 0 || off >= f.fatLen {
		return 0, fmt.Errorf("guest: fat: FAT offset %d out of range: %w", off, ErrCorrupt)
	}
	pg := off / fatPageSize
	f.mu.Lock()
	p, ok := f.pages[pg]
	f.mu.Unlock()
	if !ok {
		n := min(int64(fatPageSize), f.fatLen-pg*fatPageSize)
		p = make([]byte, n)
		if _, err := f.r.ReadAt(p, f.fatOff+pg*fatPageSize); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("guest: fat: read FAT: %w", err)
		}
		f.mu.Lock()
		if len(f.pages) >= fatMaxPages {
			clear(f.pages)
		}
		f.pages[pg] = p
		f.mu.Unlock()
	}
	return p[off-pg*fatPageSize], nil
}

func (f *fatFS) fatUint(off int64, n int) (uint32, error) {
	// Fast path: the whole entry lies in one cached page.
	if off >= 0 && off+int64(n) <= f.fatLen {
		pg := off / fatPageSize
		f.mu.Lock()
		p, ok := f.pages[pg]
		f.mu.Unlock()
		if i := off - pg*fatPageSize; ok && i+int64(n) <= int64(len(p)) {
			var v uint32
			for k := 0; k < n; k++ {
				v |= uint32(p[i+int64(k)]) << (8 * k)
			}
			return v, nil
		}
	}
	var v uint32
	for i := 0; i < n; i++ {
		b, err := f.fatByte(off + int64(i))
		if err != nil {
			return 0, err
		}
		v |= uint32(b) << (8 * i)
	}
	return v, nil
}

// next returns the FAT entry of cluster c, with end-of-chain as 0xFFFFFFFF.
func (f *fatFS) next(c uint32) (uint32, error) {
	switch f.typ {
	case "fat12":
		v, err := f.fatUint(int64(c)+int64(c)/2, 2)
		if err != nil {
			return 0, err
		}
		if c&1 == 1 {
			v >>= 4
		}
		v &= 0xFFF
		if v >= 0xFF8 {
			return 0xFFFFFFFF, nil
		}
		return v, nil
	case "fat16":
		v, err := f.fatUint(int64(c)*2, 2)
		if err != nil {
			return 0, err
		}
		if v >= 0xFFF8 {
			return 0xFFFFFFFF, nil
		}
		return v, nil
	default:
		v, err := f.fatUint(int64(c)*4, 4)
		if err != nil {
			return 0, err
		}
		v &= 0x0FFFFFFF
		if v >= 0x0FFFFFF8 {
			return 0xFFFFFFFF, nil
		}
		return v, nil
	}
}

// fatRun is a contiguous piece of a file: file offset -> disk offset.
type fatRun struct{ off, disk, len int64 }

// chain follows a cluster chain for at most maxBytes of data. The byte bound
// alone guarantees termination; a visited bitmap (one bit per cluster, so at
// most 32 MiB for the largest FAT32 and allocated only for chains longer than
// one run) turns a loop into a clear error instead of repeated data.
func (f *fatFS) chain(first uint32, maxBytes int64) ([]fatRun, error) {
	var runs []fatRun
	var visited []uint64
	c := first
	var off int64
	for off < maxBytes {
		if c < 2 || c > f.clusterCount+1 {
			return runs, fmt.Errorf("guest: fat: cluster %d out of range: %w", c, ErrCorrupt)
		}
		if visited != nil {
			if visited[c/64]&(1<<(c%64)) != 0 {
				return runs, fmt.Errorf("guest: fat: cluster chain loop at %d: %w", c, ErrCorrupt)
			}
			visited[c/64] |= 1 << (c % 64)
		}
		disk := f.dataOff + int64(c-2)*f.clusterSize
		if n := len(runs); n > 0 && runs[n-1].disk+runs[n-1].len == disk {
			runs[n-1].len += f.clusterSize
		} else {
			runs = append(runs, fatRun{off: off, disk: disk, len: f.clusterSize})
		}
		off += f.clusterSize
		nx, err := f.next(c)
		if err != nil {
			return runs, err
		}
		if nx == 0xFFFFFFFF {
			break
		}
		if nx != c+1 && visited == nil {
			// Leaving a contiguous run: from now on remember every
			// cluster, including the ones of the runs so far.
			visited = make([]uint64, (uint64(f.clusterCount)+2+63)/64)
			for _, r := range runs {
				for d := r.disk; d < r.disk+r.len; d += f.clusterSize {
					k := uint32((d-f.dataOff)/f.clusterSize) + 2
					visited[k/64] |= 1 << (k % 64)
				}
			}
		}
		c = nx
	}
	return runs, nil
}

func (f *fatFS) dirBytes(dir node) ([]byte, error) {
	if dir.ref == 0 && f.typ != "fat32" {
		b := make([]byte, min(f.rootLen, fatMaxDirLen))
		if _, err := f.r.ReadAt(b, f.rootOff); err != nil {
			return nil, fmt.Errorf("guest: fat: read root directory: %w", err)
		}
		return b, nil
	}
	c := uint32(dir.ref)
	if c == 0 { // ".." style reference to the FAT32 root
		c = f.rootCluster
	}
	runs, err := f.chain(c, fatMaxDirLen)
	var b []byte
	for _, r := range runs {
		p := make([]byte, r.len)
		if _, rerr := f.r.ReadAt(p, r.disk); rerr != nil {
			return b, fmt.Errorf("guest: fat: read directory cluster: %w", rerr)
		}
		b = append(b, p...)
	}
	return b, err
}

func (f *fatFS) list(dir node) ([]node, error) {
	b, err := f.dirBytes(dir)
	if err != nil && len(b) == 0 {
		return nil, err
	}
	// A damaged chain still lists the clusters that were readable.
	return f.parseDir(dir, b), nil
}

func lfnChecksum(short []byte) byte {
	var s byte
	for _, c := range short[:11] {
		s = (s>>1 | s<<7) + c
	}
	return s
}

func (f *fatFS) parseDir(dir node, b []byte) []node {
	var out []node
	var lfn [20 * 13]uint16
	lfnSlots, lfnNext := 0, 0 // slots announced; next ordinal expected (0 = none)
	var lfnSum byte
	for i := 0; i+32 <= len(b); i += 32 {
		e := b[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			lfnNext = 0
			continue
		}
		attr := e[11]
		if attr&0x3F == 0x0F {
			ord := int(e[0] & 0x1F)
			switch {
			case e[0]&0x40 != 0 && ord >= 1 && ord <= 20:
				lfnSlots, lfnSum = ord, e[13]
				clear(lfn[:])
			case lfnNext != 0 && ord == lfnNext && e[13] == lfnSum:
			default:
				lfnNext = 0
				continue
			}
			p := lfn[(ord-1)*13:]
			for k := 0; k < 5; k++ {
				p[k] = binary.LittleEndian.Uint16(e[1+2*k:])
			}
			for k := 0; k < 6; k++ {
				p[5+k] = binary.LittleEndian.Uint16(e[14+2*k:])
			}
			for k := 0; k < 2; k++ {
				p[11+k] = binary.LittleEndian.Uint16(e[28+2*k:])
			}
			lfnNext = ord - 1
			if lfnNext == 0 {
				lfnNext = -1 // complete, waiting for the short entry
			}
			continue
		}
		haveLFN := lfnNext == -1 && lfnSum == lfnChecksum(e[:11])
		lfnNext = 0
		if attr&0x08 != 0 || e[0] == '.' {
			continue // volume label, "." and ".."
		}
		var name string
		if haveLFN {
			u := lfn[:lfnSlots*13]
			for k, c := range u {
				if c == 0 {
					u = u[:k]
					break
				}
			}
			name = string(utf16.Decode(u))
		} else {
			name = shortName(e)
		}
		cl := uint32(binary.LittleEndian.Uint16(e[26:]))
		if f.typ == "fat32" {
			cl |= uint32(binary.LittleEndian.Uint16(e[20:])) << 16
		}
		n := node{ref: uint64(cl)}
		n.info = FileInfo{
			Name:    name,
			Size:    int64(binary.LittleEndian.Uint32(e[28:])),
			Mode:    0o644,
			ModTime: fatTime(binary.LittleEndian.Uint16(e[24:]), binary.LittleEndian.Uint16(e[22:])),
			Nlink:   1,
			Ino:     uint64(cl),
		}
		if attr&0x01 != 0 {
			n.info.Mode = 0o444
		}
		if attr&0x10 != 0 {
			n.info.Mode = fs.ModeDir | 0o755
			n.info.Size = 0
		}
		if cl == 0 {
			// Empty files have no cluster: use the entry's position,
			// with the top bit set so it cannot collide with a cluster.
			h := fnv.New64a()
			fmt.Fprintf(h, "%d/%d", dir.ref, i)
			n.info.Ino = h.Sum64() | 1<<63
		}
		out = append(out, n)
	}
	return out
}

func fatTime(date, tm uint16) time.Time {
	if date == 0 {
		return time.Time{}
	}
	return time.Date(1980+int(date>>9), time.Month(date>>5&15), int(date&31),
		int(tm>>11), int(tm>>5&63), int(tm&31)*2, 0, time.UTC)
}

// shortName renders an 8.3 entry, honouring the NT lower-case flags (byte 12)
// that mkfs.vfat, mtools and Windows use for names like "readme.txt".
func shortName(e []byte) string {
	base := []byte(strings.TrimRight(string(e[0:8]), " "))
	ext := []byte(strings.TrimRight(string(e[8:11]), " "))
	if len(base) > 0 && base[0] == 0x05 {
		base[0] = 0xE5
	}
	s := decodeOEM(base)
	if e[12]&0x08 != 0 {
		s = strings.ToLower(s)
	}
	if len(ext) > 0 {
		x := decodeOEM(ext)
		if e[12]&0x10 != 0 {
			x = strings.ToLower(x)
		}
		s += "." + x
	}
	return s
}

// cp437 is the upper half of code page 437, the OEM code page 8.3 names use
// on US/Western guests. Other code pages decode to the wrong letters but never
// to unsafe names.
const cp437 = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0"

var cp437Runes = []rune(cp437)

func decodeOEM(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		if c < 0x80 {
			sb.WriteByte(c)
		} else {
			sb.WriteRune(cp437Runes[c-0x80])
		}
	}
	return sb.String()
}

func (f *fatFS) open(n node) (File, error) {
	ff := &fatFile{fs: f, size: n.info.Size}
	if ff.size == 0 {
		return ff, nil
	}
	runs, err := f.chain(uint32(n.ref), ff.size)
	if err != nil && len(runs) == 0 {
		return nil, err
	}
	// A chain that ends early (or loops) leaves the tail unreadable:
	// ReadAt reports ErrCorrupt there instead of inventing data.
	ff.runs, ff.tailErr = runs, err
	return ff, nil
}

type fatFile struct {
	fs      *fatFS
	size    int64
	runs    []fatRun
	tailErr error // why the chain ended before size, if it did
}

func (f *fatFile) Size() int64  { return f.size }
func (f *fatFile) Close() error { return nil }

func (f *fatFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := readRuns(f.fs.r, f.runs, false, p, off)
	if err != nil && f.tailErr != nil && errors.Is(err, ErrCorrupt) {
		err = fmt.Errorf("%w (%w)", f.tailErr, err)
	}
	return n, err
}

// readRuns reads p at off through a sorted, non-overlapping run table (file
// offset -> disk offset), shared by FAT and ext4; lock-free, so parallel
// readers only meet in the underlying ReaderAt. A run with disk < 0 reads as
// zeros (ext4 unwritten extents). Offsets not covered by any run are holes
// (zeros) when holes is set (ext4 sparse files) and damage otherwise (FAT).
func readRuns(r io.ReaderAt, runs []fatRun, holes bool, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		i := sort.Search(len(runs), func(i int) bool { return runs[i].off+runs[i].len > pos })
		if i == len(runs) || runs[i].off > pos {
			if !holes {
				return done, fmt.Errorf("guest: no data mapped at offset %d: %w", pos, ErrCorrupt)
			}
			end := off + int64(len(p))
			if i < len(runs) {
				end = min(end, runs[i].off)
			}
			k := int(end - pos)
			clear(p[done : done+k])
			done += k
			continue
		}
		x := runs[i]
		k := min(int64(len(p)-done), x.off+x.len-pos)
		buf := p[done : done+int(k)]
		if x.disk < 0 {
			clear(buf)
		} else if m, err := r.ReadAt(buf, x.disk+pos-x.off); m < len(buf) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return done + m, fmt.Errorf("guest: read data at %d: %w", x.disk+pos-x.off, err)
		}
		done += int(k)
	}
	return done, nil
}
