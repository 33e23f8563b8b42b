// Command vhdxgen is the test-fixture helper behind testdata/mkdisks.sh. It
// does the few things Debian tools cannot:
//
//	vhdxgen rand SEED SIZE            deterministic pseudo-random bytes on stdout
//	vhdxgen dirty FILE.vhdx           turn a qemu-made VHDX into one whose log
//	                                  MUST be replayed (VHDX-NOTES 1.4)
//	vhdxgen diff [flags]              write a differencing child (.avhdx) of a
//	                                  dynamic VHDX, plus the spec-expected bytes
//
// It is test tooling: it fails loudly (exit 1) on anything unexpected and never
// tries to be a general VHDX writer. It deliberately imports nothing from
// vhdxfs: the fixtures must not change (or stop building) while the readers
// under test are being edited, and the fixture cache key (internal/testdisks)
// hashes only this directory and testdata/mkdisks.sh.
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf16"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "rand":
		err = cmdRand(os.Args[2:])
	case "dirty":
		err = cmdDirty(os.Args[2:])
	case "diff":
		err = cmdDiff(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vhdxgen %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vhdxgen rand SEED SIZE | dirty FILE.vhdx | diff -parent P.vhdx -parent-raw P.raw -out C.avhdx [...]")
	os.Exit(2)
}

// prng is a deterministic byte stream: SHA-256 in counter mode over a seed.
// Stable across Go versions (unlike math/rand), and fast enough for a few MiB.
type prng struct {
	seed [32]byte
	ctr  uint64
	buf  []byte
}

func newPRNG(seed string) *prng { return &prng{seed: sha256.Sum256([]byte(seed))} }

func (p *prng) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if len(p.buf) == 0 {
			var in [40]byte
			copy(in[:], p.seed[:])
			binary.LittleEndian.PutUint64(in[32:], p.ctr)
			p.ctr++
			s := sha256.Sum256(in[:])
			p.buf = s[:]
		}
		c := copy(b[n:], p.buf)
		p.buf = p.buf[c:]
		n += c
	}
	return n, nil
}

func (p *prng) bytes(n int) []byte {
	b := make([]byte, n)
	p.Read(b)
	return b
}

func cmdRand(args []string) error {
	if len(args) != 2 {
		return errors.New("want SEED SIZE")
	}
	n, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("bad size %q", args[1])
	}
	_, err = io.CopyN(os.Stdout, newPRNG(args[0]), n)
	return err
}

// ---- minimal VHDX reading (only what the fixtures need) ----

type header struct {
	off       int64
	seq       uint64
	dataWrite guid
	logGUID   guid
	logLength uint32
	logOffset uint64
}

type image struct {
	f           *os.File
	hdrs        []header // valid headers
	cur         header
	batOff      int64
	batLen      int64
	metaOff     int64
	blockSize   uint32
	virtualSize int64
	lss, pss    uint32
	diskID      guid
}

func readAt(f *os.File, n int, off int64) ([]byte, error) {
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("read %d bytes at %#x: %w", n, off, err)
	}
	return b, nil
}

func openImage(path string, write bool) (*image, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	im := &image{f: f}
	sig, err := readAt(f, 8, 0)
	if err != nil {
		return nil, err
	}
	if string(sig) != SigFile {
		return nil, fmt.Errorf("%s: not a VHDX", path)
	}
	for _, off := range []int64{Header1Offset, Header2Offset} {
		b, err := readAt(f, HeaderSize, off)
		if err != nil {
			return nil, err
		}
		if string(b[:4]) != SigHeader || binary.LittleEndian.Uint32(b[4:]) != Checksum(b, 4) {
			continue
		}
		h := header{
			off:       off,
			seq:       binary.LittleEndian.Uint64(b[8:]),
			dataWrite: guidFromMixed(b[32:48]),
			logGUID:   guidFromMixed(b[48:64]),
			logLength: binary.LittleEndian.Uint32(b[68:]),
			logOffset: binary.LittleEndian.Uint64(b[72:]),
		}
		im.hdrs = append(im.hdrs, h)
		if len(im.hdrs) == 1 || h.seq > im.cur.seq {
			im.cur = h
		}
	}
	if len(im.hdrs) == 0 {
		return nil, fmt.Errorf("%s: no valid header", path)
	}
	rt, err := readAt(f, RegionTableSize, RegionTable1Off)
	if err != nil {
		return nil, err
	}
	if string(rt[:4]) != SigRegion || binary.LittleEndian.Uint32(rt[4:]) != Checksum(rt, 4) {
		return nil, fmt.Errorf("%s: bad region table 1", path)
	}
	n := int(binary.LittleEndian.Uint32(rt[8:]))
	for i := 0; i < n && 16+32*(i+1) <= len(rt); i++ {
		e := rt[16+32*i:]
		g := guidFromMixed(e[:16])
		off := int64(binary.LittleEndian.Uint64(e[16:]))
		ln := int64(binary.LittleEndian.Uint32(e[24:]))
		switch g {
		case RegionBAT:
			im.batOff, im.batLen = off, ln
		case RegionMetadata:
			im.metaOff = off
		}
	}
	if im.batOff == 0 || im.metaOff == 0 {
		return nil, fmt.Errorf("%s: missing BAT or metadata region", path)
	}
	mt, err := readAt(f, 64*1024, im.metaOff)
	if err != nil {
		return nil, err
	}
	if string(mt[:8]) != SigMetadata {
		return nil, fmt.Errorf("%s: bad metadata table", path)
	}
	cnt := int(binary.LittleEndian.Uint16(mt[10:]))
	for i := 0; i < cnt; i++ {
		e := mt[32+32*i:]
		g := guidFromMixed(e[:16])
		off := int64(binary.LittleEndian.Uint32(e[16:]))
		ln := int(binary.LittleEndian.Uint32(e[20:]))
		if ln == 0 {
			continue
		}
		v, err := readAt(f, ln, im.metaOff+off)
		if err != nil {
			return nil, err
		}
		switch g {
		case MetaFileParameters:
			im.blockSize = binary.LittleEndian.Uint32(v)
			if binary.LittleEndian.Uint32(v[4:])&2 != 0 {
				return nil, fmt.Errorf("%s: is itself a differencing disk", path)
			}
		case MetaVirtualSize:
			im.virtualSize = int64(binary.LittleEndian.Uint64(v))
		case MetaLogicalSector:
			im.lss = binary.LittleEndian.Uint32(v)
		case MetaPhysicalSector:
			im.pss = binary.LittleEndian.Uint32(v)
		case MetaDiskID:
			im.diskID = guidFromMixed(v)
		}
	}
	if im.blockSize == 0 || im.virtualSize == 0 || im.lss == 0 {
		return nil, fmt.Errorf("%s: incomplete metadata", path)
	}
	return im, nil
}

// ---- dirty ----

// cmdDirty follows VHDX-NOTES 1.4: qemu-img convert leaves old "loge" entries
// in the log area while LogGuid=0 (so they must be ignored). Pointing both
// headers' LogGuid at the newest entry makes that entry the active sequence,
// and wiping the on-disk BAT to PAYLOAD_BLOCK_ZERO makes the replay matter:
// a reader that skips the log sees an all-zero disk.
func cmdDirty(args []string) error {
	if len(args) != 1 {
		return errors.New("want FILE.vhdx")
	}
	im, err := openImage(args[0], true)
	if err != nil {
		return err
	}
	defer im.f.Close()
	if !im.cur.logGUID.IsZero() {
		return errors.New("log is already dirty")
	}
	logOff, logLen := int64(im.cur.logOffset), int64(im.cur.logLength)
	lg, err := readAt(im.f, int(logLen), logOff)
	if err != nil {
		return err
	}
	var best []byte
	var bestSeq uint64
	for o := 0; o+64 <= len(lg); o += 4096 {
		e := lg[o:]
		if string(e[:4]) != SigLogEntry {
			continue
		}
		ln := int(binary.LittleEndian.Uint32(e[8:]))
		if ln < 4096 || ln%4096 != 0 || o+ln > len(lg) || binary.LittleEndian.Uint32(e[4:]) != Checksum(e[:ln], 4) {
			continue
		}
		if seq := binary.LittleEndian.Uint64(e[16:]); seq > bestSeq {
			bestSeq, best = seq, e[:ln]
		}
	}
	if best == nil {
		return errors.New("no valid log entry found (did qemu leave none?)")
	}
	logGUID := append([]byte(nil), best[32:48]...)
	for _, h := range im.hdrs {
		b, err := readAt(im.f, HeaderSize, h.off)
		if err != nil {
			return err
		}
		copy(b[48:64], logGUID)
		binary.LittleEndian.PutUint32(b[4:], Checksum(b, 4))
		if _, err := im.f.WriteAt(b, h.off); err != nil {
			return err
		}
	}
	n := BATEntries(im.virtualSize, im.blockSize, im.lss, false)
	cr := ChunkRatio(im.blockSize, im.lss)
	bat := make([]byte, n*8)
	for b := int64(0); b < PayloadBlocks(im.virtualSize, im.blockSize); b++ {
		binary.LittleEndian.PutUint64(bat[BATIndex(b, cr)*8:], PayloadZero)
	}
	if _, err := im.f.WriteAt(bat, im.batOff); err != nil {
		return err
	}
	fmt.Printf("log entry seq %d guid %s now active; BAT (%d entries) wiped to ZERO\n",
		bestSeq, guidFromMixed(logGUID), n)
	return im.f.Sync()
}

// ---- diff ----

// Block plan of the child (cycled over the parent's blocks). Every kind a
// reader must handle appears, and the same kind appears twice so that a
// reader which only gets the first one right still fails.
var plan = []uint64{
	PayloadFullyPresent,     // 0: child data everywhere
	PayloadPartiallyPresent, // 1: mixed, bitmap pattern A
	PayloadNotPresent,       // 2: parent
	PayloadZero,             // 3: zeros, parent NOT consulted
	PayloadPartiallyPresent, // 4: mixed, bitmap pattern B
	PayloadFullyPresent,     // 5
	PayloadNotPresent,       // 6
	PayloadZero,             // 7
}

// sectorSet reports whether sector s (within block b, 0-based) is present in
// the child for a PARTIALLY_PRESENT block. Patterns cover the first and last
// sector of the block, runs crossing bitmap bytes, and single bits.
func sectorSet(b, s, sectorsPerBlock int64) bool {
	if b%2 == 1 { // pattern A: a few runs
		return s < 8 || (s >= 100 && s < 200) || s == 1001 || s >= sectorsPerBlock-8
	}
	// pattern B: every third sector, plus bytes 0x55 for a while
	if s < 512 {
		return s%2 == 0
	}
	return s%3 == 0
}

func cmdDiff(args []string) error {
	fs := flag.NewFlagSet("diff", flag.ContinueOnError)
	parent := fs.String("parent", "", "parent .vhdx (qemu-made dynamic VHDX)")
	parentRaw := fs.String("parent-raw", "", "the parent's guest bytes (raw), to compute -expected")
	out := fs.String("out", "", "child .avhdx to write")
	rel := fs.String("relative", `.\base.vhdx`, "relative_path locator value")
	abs := fs.String("absolute", `\\?\C:\VMs\vmvault\base.vhdx`, "absolute_win32_path locator value")
	linkage := fs.String("linkage", "", "parent_linkage GUID (default: the parent's DataWriteGuid)")
	seed := fs.String("seed", "child", "seed for the child's data")
	expected := fs.String("expected", "", "write the spec-expected guest bytes of the chain here")
	zeroList := fs.String("zero-ranges", "", "write 'offset length' lines of the child's ZERO blocks here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *parent == "" || *out == "" {
		return errors.New("need -parent and -out")
	}
	p, err := openImage(*parent, false)
	if err != nil {
		return err
	}
	defer p.f.Close()
	link := p.cur.dataWrite
	if *linkage != "" {
		if link, err = parseGUID(*linkage); err != nil {
			return err
		}
	}

	bs := int64(p.blockSize)
	vs := p.virtualSize
	lss := int64(p.lss)
	nb := PayloadBlocks(vs, p.blockSize)
	cr := ChunkRatio(p.blockSize, p.lss)
	nEntries := BATEntries(vs, p.blockSize, p.lss, true)
	batLen := RoundUp(nEntries*8, MiB)
	spb := bs / lss // sectors per block

	const logOff, logLen = 1 * MiB, 1 * MiB
	batOff := int64(2 * MiB)
	metaOff := batOff + batLen
	next := metaOff + MiB // first free 1 MiB slot for payload

	// Sector bitmaps: one 1 MiB block per chunk that has a partial block.
	nChunks := (nb + cr - 1) / cr
	sbOff := make([]int64, nChunks)
	sb := make([][]byte, nChunks)
	states := make([]uint64, nb)
	for b := int64(0); b < nb; b++ {
		states[b] = plan[b%int64(len(plan))]
	}
	// Make the last block fully present: with a partial last block this
	// checks that readers clip at the virtual size.
	states[nb-1] = PayloadFullyPresent
	for b := int64(0); b < nb; b++ {
		if states[b] == PayloadPartiallyPresent && sb[b/cr] == nil {
			c := b / cr
			sb[c] = make([]byte, MiB)
			sbOff[c] = next
			next += MiB
		}
	}
	// Payload blocks are stored in reverse block order so that a reader
	// assuming "file order = block order" fails.
	blockOff := make([]int64, nb)
	for b := nb - 1; b >= 0; b-- {
		if st := states[b]; st == PayloadFullyPresent || st == PayloadPartiallyPresent {
			blockOff[b] = next
			next += bs
		}
	}
	fileEnd := next

	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := func(b []byte, off int64) {
		if err == nil {
			_, err = f.WriteAt(b, off)
		}
	}

	// File type identifier.
	ft := make([]byte, 64*1024)
	copy(ft, SigFile)
	for i, u := range utf16.Encode([]rune("vmvault testdisks vhdxgen")) {
		binary.LittleEndian.PutUint16(ft[8+2*i:], u)
	}
	w(ft, 0)

	// Headers: deterministic GUIDs from the seed, so rebuilds are identical.
	g := newPRNG("guids:" + *seed)
	var fileWrite, dataWrite, diskID guid
	g.Read(fileWrite[:])
	g.Read(dataWrite[:])
	g.Read(diskID[:])
	for i, seq := range []uint64{1, 2} {
		h := make([]byte, HeaderSize)
		copy(h, SigHeader)
		binary.LittleEndian.PutUint64(h[8:], seq)
		fw, dw := fileWrite.Mixed(), dataWrite.Mixed()
		copy(h[16:], fw[:])
		copy(h[32:], dw[:])
		// LogGuid zero: clean log.
		binary.LittleEndian.PutUint16(h[64:], 0) // LogVersion
		binary.LittleEndian.PutUint16(h[66:], 1) // Version
		binary.LittleEndian.PutUint32(h[68:], logLen)
		binary.LittleEndian.PutUint64(h[72:], logOff)
		binary.LittleEndian.PutUint32(h[4:], Checksum(h, 4))
		w(h, []int64{Header1Offset, Header2Offset}[i])
	}

	// Region tables (two identical copies).
	rt := make([]byte, RegionTableSize)
	copy(rt, SigRegion)
	binary.LittleEndian.PutUint32(rt[8:], 2)
	putRegion := func(e []byte, id guid, off, ln int64) {
		m := id.Mixed()
		copy(e, m[:])
		binary.LittleEndian.PutUint64(e[16:], uint64(off))
		binary.LittleEndian.PutUint32(e[24:], uint32(ln))
		binary.LittleEndian.PutUint32(e[28:], 1) // Required
	}
	putRegion(rt[16:], RegionBAT, batOff, batLen)
	putRegion(rt[48:], RegionMetadata, metaOff, MiB)
	binary.LittleEndian.PutUint32(rt[4:], Checksum(rt, 4))
	w(rt, RegionTable1Off)
	w(rt, RegionTable2Off)

	// Log region stays all zeros (LogGuid=0).
	w(make([]byte, logLen), logOff)

	// Metadata.
	md := make([]byte, MiB)
	copy(md, SigMetadata)
	type item struct {
		id    guid
		flags uint32
		data  []byte
	}
	u32 := func(v uint32) []byte { b := make([]byte, 4); binary.LittleEndian.PutUint32(b, v); return b }
	u64 := func(v uint64) []byte { b := make([]byte, 8); binary.LittleEndian.PutUint64(b, v); return b }
	fp := append(u32(p.blockSize), u32(2)...) // flags: HasParent
	did := diskID.Mixed()
	items := []item{
		{MetaFileParameters, 4, fp},
		{MetaVirtualSize, 6, u64(uint64(vs))},
		{MetaDiskID, 6, did[:]},
		{MetaLogicalSector, 6, u32(p.lss)},
		{MetaPhysicalSector, 6, u32(p.pss)},
		{MetaParentLocator, 4, parentLocator([][2]string{
			{"parent_linkage", "{" + link.String() + "}"},
			{"relative_path", *rel},
			{"absolute_win32_path", *abs},
		})},
	}
	binary.LittleEndian.PutUint16(md[10:], uint16(len(items)))
	ioff := 64 * 1024
	for i, it := range items {
		e := md[32+32*i:]
		m := it.id.Mixed()
		copy(e, m[:])
		binary.LittleEndian.PutUint32(e[16:], uint32(ioff))
		binary.LittleEndian.PutUint32(e[20:], uint32(len(it.data)))
		binary.LittleEndian.PutUint32(e[24:], it.flags)
		copy(md[ioff:], it.data)
		ioff += (len(it.data) + 7) &^ 7
	}
	w(md, metaOff)

	// Payload, bitmaps, BAT and the expected chain bytes.
	var praw *os.File
	var exp *os.File
	if *expected != "" {
		if *parentRaw == "" {
			return errors.New("-expected needs -parent-raw")
		}
		if praw, err = os.Open(*parentRaw); err != nil {
			return err
		}
		defer praw.Close()
		if exp, err = os.Create(*expected); err != nil {
			return err
		}
		defer exp.Close()
	}
	var zl strings.Builder
	bat := make([]byte, batLen)
	data := newPRNG("data:" + *seed)
	for b := int64(0); b < nb; b++ {
		st := states[b]
		entry := st
		if blockOff[b] != 0 {
			entry |= uint64(blockOff[b])
		}
		binary.LittleEndian.PutUint64(bat[BATIndex(b, cr)*8:], entry)

		// Child bytes for the whole block (padded past the virtual size).
		child := data.bytes(int(bs))
		if st == PayloadPartiallyPresent {
			for s := int64(0); s < spb; s++ {
				gs := b*spb + s // sector number on the disk
				if sectorSet(b, s, spb) {
					c := b / cr
					bit := gs % (1 << 23)
					sb[c][bit/8] |= 1 << (bit % 8)
				}
			}
		}
		if blockOff[b] != 0 {
			w(child, blockOff[b])
		}

		blkStart := b * bs
		blkLen := min(bs, vs-blkStart)
		if st == PayloadZero {
			fmt.Fprintf(&zl, "%d %d\n", blkStart, blkLen)
		}
		if exp == nil {
			continue
		}
		par := make([]byte, blkLen)
		if _, err := praw.ReadAt(par, blkStart); err != nil {
			return fmt.Errorf("parent raw: %w", err)
		}
		res := make([]byte, blkLen)
		switch st {
		case PayloadFullyPresent:
			copy(res, child)
		case PayloadNotPresent:
			copy(res, par)
		case PayloadZero:
			// zeros
		case PayloadPartiallyPresent:
			for s := int64(0); s*lss < blkLen; s++ {
				src := par
				if sectorSet(b, s, spb) {
					src = child
				}
				copy(res[s*lss:(s+1)*lss], src[s*lss:(s+1)*lss])
			}
		}
		if _, err := exp.WriteAt(res, blkStart); err != nil {
			return err
		}
	}
	for c := int64(0); c < nChunks; c++ {
		if sb[c] == nil {
			continue
		}
		binary.LittleEndian.PutUint64(bat[SBIndex(c, cr)*8:], uint64(sbOff[c])|SBPresent)
		w(sb[c], sbOff[c])
	}
	w(bat, batOff)
	if err != nil {
		return err
	}
	if err := f.Truncate(fileEnd); err != nil {
		return err
	}
	if *zeroList != "" {
		if err := os.WriteFile(*zeroList, []byte(zl.String()), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("%s: %d blocks of %d, states %v, parent %s (linkage {%s}), data write guid {%s}\n",
		*out, nb, bs, states, *parent, link, dataWrite)
	return f.Sync()
}

// parentLocator encodes the Parent Locator metadata item (MS-VHDX 2.6.2.6):
// a 20-byte header, 12-byte key/value entries, then UTF-16LE strings.
func parentLocator(kv [][2]string) []byte {
	hdr := 20 + 12*len(kv)
	b := make([]byte, hdr)
	lt := LocatorTypeVHDX.Mixed()
	copy(b, lt[:])
	binary.LittleEndian.PutUint16(b[18:], uint16(len(kv)))
	enc := func(s string) []byte {
		u := utf16.Encode([]rune(s))
		out := make([]byte, 2*len(u))
		for i, c := range u {
			binary.LittleEndian.PutUint16(out[2*i:], c)
		}
		return out
	}
	var strs []byte
	for i, p := range kv {
		k, v := enc(p[0]), enc(p[1])
		e := b[20+12*i:]
		binary.LittleEndian.PutUint32(e[0:], uint32(hdr+len(strs)))
		binary.LittleEndian.PutUint32(e[4:], uint32(hdr+len(strs)+len(k)))
		binary.LittleEndian.PutUint16(e[8:], uint16(len(k)))
		binary.LittleEndian.PutUint16(e[10:], uint16(len(v)))
		strs = append(append(strs, k...), v...)
	}
	b = append(b, strs...)
	return b
}
