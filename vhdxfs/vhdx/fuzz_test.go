package vhdx

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// Fuzz targets. Seeds under testdata/fuzz/<Name>/ come from real files (a
// tiny qemu-made VHDX, a dirty-log fixture and the Hyper-V samples); see
// TestReaderGenFuzzSeeds. Every target checks the same contract: errors
// start with "vhdx: ", and nothing panics, hangs or allocates by a field.

// rdtSparse is a file made of 4 KiB pages over zeros: the fuzz encoding of
// a whole VHDX without its (irrelevant) payload.
type rdtSparse struct {
	size  int64
	pages map[int64][]byte
}

func (s *rdtSparse) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > s.size-off {
		n = int(s.size - off)
	}
	for i := 0; i < n; {
		pg := (off + int64(i)) &^ 4095
		in := int(off + int64(i) - pg)
		k := min(4096-in, n-i)
		if b, ok := s.pages[pg]; ok {
			copy(p[i:i+k], b[in:])
		} else {
			clear(p[i : i+k])
		}
		i += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// rdtMaxFuzzFile caps the claimed file size (the Hyper-V differencing
// sample is 70 MiB) so BAT loading stays quick.
const rdtMaxFuzzFile = 96 * MiB

// rdtDecodeSparse decodes the fuzz input: u32 file size, then records of
// u16 page number, u16 length, bytes.
func rdtDecodeSparse(data []byte) *rdtSparse {
	s := &rdtSparse{pages: map[int64][]byte{}}
	if len(data) < 4 {
		return s
	}
	s.size = int64(binary.LittleEndian.Uint32(data)) % (rdtMaxFuzzFile + 1)
	data = data[4:]
	for len(data) >= 4 {
		pg := int64(binary.LittleEndian.Uint16(data))
		n := int(binary.LittleEndian.Uint16(data[2:])) % 4097
		data = data[4:]
		n = min(n, len(data))
		b := make([]byte, 4096)
		copy(b, data[:n])
		s.pages[pg*4096] = b
		data = data[n:]
	}
	return s
}

// rdtEncodeSparse encodes the non-zero pages of file (up to limit pages).
func rdtEncodeSparse(file []byte, keep func(off int64) bool) []byte {
	out := binary.LittleEndian.AppendUint32(nil, uint32(min(len(file), rdtMaxFuzzFile)))
	for pg := 0; pg+4096 <= len(file) && pg/4096 < 1<<16; pg += 4096 {
		b := bytes.TrimRight(file[pg:pg+4096], "\x00")
		if len(b) == 0 || !keep(int64(pg)) {
			continue
		}
		out = binary.LittleEndian.AppendUint16(out, uint16(pg/4096))
		out = binary.LittleEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	return out
}

func rdtCheckErr(t *testing.T, err error) {
	if err != nil && !strings.HasPrefix(err.Error(), "vhdx: ") {
		t.Fatalf("error without prefix: %v", err)
	}
}

// FuzzInspect parses a whole (sparse) file, then opens it and reads a few
// windows and the allocation map.
func FuzzInspect(f *testing.F) {
	f.Add(rdtEncodeSparse(nil, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := rdtDecodeSparse(data)
		_, err := Inspect(s, s.size)
		rdtCheckErr(t, err)
		if err != nil {
			return
		}
		noParent := func(string) (io.ReaderAt, int64, io.Closer, error) { return nil, 0, nil, fs.ErrNotExist }
		d, err := OpenFile(s, s.size, "fuzz.vhdx", Options{OpenParent: noParent})
		if err != nil {
			return
		}
		buf := make([]byte, 64*1024+513)
		for _, off := range []int64{0, 511, MiB - 3, d.Size() / 2, d.Size() - 1000} {
			if off >= 0 {
				if _, err := d.ReadAt(buf, off); err != nil && err != io.EOF {
					rdtCheckErr(t, err)
				}
			}
		}
		a := d.Allocated()
		if n := vdisk.NormalizeExtents(a, d.Size()); len(n) != len(a) {
			t.Fatalf("Allocated not normalized")
		}
	})
}

// FuzzHeader feeds two header slots; fix=true recomputes their checksums
// so the fuzzer gets past them.
func FuzzHeader(f *testing.F) {
	f.Add(make([]byte, 2*HeaderSize), true)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		var raw [2][]byte
		for i := range raw {
			raw[i] = make([]byte, HeaderSize)
			if len(data) > i*HeaderSize {
				copy(raw[i], data[i*HeaderSize:])
			}
			if fix {
				binary.LittleEndian.PutUint32(raw[i][4:], Checksum(raw[i], 4))
			}
		}
		h := [2]HeaderInfo{parseHeader(raw[0]), parseHeader(raw[1])}
		cur, err := selectHeader(h, raw)
		rdtCheckErr(t, err)
		if err == nil {
			if !h[cur].Valid {
				t.Fatal("selected an invalid header")
			}
			rdtCheckErr(t, checkLogPlacement(h[cur], 64*MiB))
		}
	})
}

// FuzzRegionTable feeds one region table; fix=true recomputes its checksum.
func FuzzRegionTable(f *testing.F) {
	f.Add(make([]byte, 64), true)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		buf := make([]byte, RegionTableSize)
		copy(buf, data)
		if fix {
			binary.LittleEndian.PutUint32(buf[4:], Checksum(buf, 4))
		}
		entries, err := parseRegionTable(buf)
		rdtCheckErr(t, err)
		if err != nil {
			return
		}
		bat, meta, err := pickRegions(entries, 64*MiB, rdSpan{MiB, 2 * MiB, "log"})
		rdtCheckErr(t, err)
		if err == nil && (bat.FileOffset < HeaderSectionSize || meta.FileOffset+uint64(meta.Length) > 64*MiB) {
			t.Fatalf("accepted bad regions %+v %+v", bat, meta)
		}
	})
}

// FuzzMetadata feeds the metadata table (first 64 KiB of the region) and
// the item area after it.
func FuzzMetadata(f *testing.F) {
	f.Add([]byte(SigMetadata), []byte{})
	f.Fuzz(func(t *testing.T, table, items []byte) {
		region := make([]byte, 2*rdMetaTableSize)
		copy(region, table[:min(len(table), rdMetaTableSize)])
		copy(region[rdMetaTableSize:], items)
		mr := &rdMetaReader{r: bytes.NewReader(region), fileSize: int64(len(region)), effSize: int64(len(region))}
		md, err := readMetadata(mr, RegionEntry{FileOffset: 0, Length: uint32(len(region))})
		rdtCheckErr(t, err)
		if err == nil && (!validBlockSize(md.BlockSize) || md.VirtualSize > MaxVirtualSize) {
			t.Fatalf("accepted %+v", md)
		}
	})
}

// FuzzBAT feeds a geometry and BAT bytes, validates them and reads through
// the resulting layer (with an empty parent for differencing geometries).
func FuzzBAT(f *testing.F) {
	f.Add(uint32(10*MiB), uint8(1), uint8(0), false, []byte{})
	f.Fuzz(func(t *testing.T, vsize uint32, bsSel, lssSel uint8, hasParent bool, batBytes []byte) {
		md := &Metadata{BlockSize: MiB << (bsSel % 9), LogicalSectorSize: 512 << (3 * (lssSel % 2)), HasParent: hasParent}
		md.VirtualSize = int64(vsize) &^ int64(md.LogicalSectorSize-1)
		g := newGeometry(md)
		const fileSize = 64 * MiB
		bat := make([]uint64, g.entries)
		for i := range bat {
			if 8*i+8 <= len(batBytes) {
				bat[i] = binary.LittleEndian.Uint64(batBytes[8*i:])
			}
		}
		_, err := checkBAT(bat, g, fileSize, []rdSpan{{MiB, 2 * MiB, "log"}, {2 * MiB, 3 * MiB, "BAT"}})
		rdtCheckErr(t, err)
		if err != nil {
			return
		}
		file := &rdtSparse{size: fileSize, pages: map[int64][]byte{}}
		for i := int64(0); i < 64; i++ { // a few set bitmap/data pages
			file.pages[i*MiB] = bytes.Repeat([]byte{byte(i*37 + 1)}, 4096)
		}
		mr := &rdMetaReader{r: file, fileSize: fileSize, effSize: fileSize}
		l := newLayer("fuzz", file, &Info{Metadata: md}, &rdParsed{meta: mr, geo: g, bat: bat})
		d := &Disk{layers: []*rdLayer{l}}
		if hasParent {
			pmd := &Metadata{BlockSize: MiB, LogicalSectorSize: md.LogicalSectorSize, VirtualSize: md.VirtualSize}
			pg := newGeometry(pmd)
			d.layers = append(d.layers, newLayer("parent", file, &Info{Metadata: pmd}, &rdParsed{meta: mr, geo: pg, bat: make([]uint64, pg.entries)}))
		}
		buf := make([]byte, 3*MiB+100)
		for _, off := range []int64{0, 4095, int64(vsize) / 3, int64(vsize) - 2*MiB} {
			if off >= 0 {
				if _, err := d.ReadAt(buf, off); err != nil && err != io.EOF {
					t.Fatal(err)
				}
			}
		}
		d.Allocated()
	})
}

// FuzzLog feeds a 1 MiB log ring (fix=true recomputes the checksum of an
// entry at offset 0 and of every entry laid end to end after it) and
// replays it over a sparse file.
func FuzzLog(f *testing.F) {
	f.Add([]byte(SigLogEntry), true)
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		log := make([]byte, MiB)
		copy(log, data)
		var guid vdisk.GUID
		if string(log[:4]) == SigLogEntry {
			guid = vdisk.GUIDFromMixed(log[32:48])
		}
		if fix {
			for off := 0; off+64 <= len(log) && string(log[off:off+4]) == SigLogEntry; {
				n := int(binary.LittleEndian.Uint32(log[off+8:]))
				if n < 4096 || n%4096 != 0 || off+n > len(log) {
					break
				}
				binary.LittleEndian.PutUint32(log[off+4:], Checksum(log[off:off+n], 4))
				off += n
			}
		}
		if guid.IsZero() {
			guid = vdisk.GUID{1}
		}
		file := &rdtSparse{size: 8 * MiB, pages: map[int64][]byte{}}
		for i := 0; i < MiB; i += 4096 {
			file.pages[int64(MiB+i)] = log[i : i+4096]
		}
		h := HeaderInfo{Valid: true, LogGUID: guid, LogLength: MiB, LogOffset: MiB, Version: 1}
		ov, _, err := replayLog(file, file.size, h)
		rdtCheckErr(t, err)
		if err == nil && ov != nil {
			// Apply small windows around a few replayed sectors (cheaper
			// than one big buffer, so the fuzzer runs more inputs).
			p := make([]byte, 3*4096)
			n := 0
			for k := range ov.sectors {
				if n++; n > 8 {
					break
				}
				ov.apply(p, k-4096+1)
			}
			ov.apply(p, 0)
		}
	})
}

// TestReaderGenFuzzSeeds regenerates the committed seed corpus from real
// files when VMVAULT_GEN_FUZZ_SEEDS=1 (the seeds are then run as ordinary
// tests by every `go test`).
func TestReaderGenFuzzSeeds(t *testing.T) {
	if os.Getenv("VMVAULT_GEN_FUZZ_SEEDS") != "1" {
		t.Skip("set VMVAULT_GEN_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	rdtNeedQemu(t)
	dir := t.TempDir()
	tiny := filepath.Join(dir, "tiny.vhdx")
	src := filepath.Join(dir, "tiny.raw")
	if err := os.WriteFile(src, bytes.Repeat([]byte("vmvault!"), 3*MiB/8), 0o644); err != nil {
		t.Fatal(err)
	}
	rdtRun(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, tiny)
	files := map[string][]byte{}
	tb, _ := os.ReadFile(tiny)
	files["qemu-tiny"] = tb
	if info, err := Inspect(bytes.NewReader(tb), int64(len(tb))); err == nil {
		entries := rdtScanLog(tb)
		files["qemu-dirty"] = rdtMakeDirty(t, tb, entries[len(entries)-1], int(info.BAT.Entries))
	}
	for _, s := range []string{"fixed.vhdx", "dynamic.vhdx", "differencing.avhdx"} {
		b, err := os.ReadFile(rdtGunzip(t, s))
		if err != nil {
			t.Fatal(err)
		}
		files["hyperv-"+strings.TrimSuffix(strings.TrimSuffix(s, ".vhdx"), ".avhdx")] = b
	}
	child := rdtSpec{vsize: 3 * MiB, dataWrite: rdtGUIDn(2), states: []uint8{7, 0, 6}, present: func(s int64) bool { return s%5 == 0 },
		locator: map[string]string{"parent_linkage": rdtGUIDn(1).String(), "relative_path": `.\p.vhdx`}}
	files["crafted-child"] = rdtBuild(t, child)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	write := func(target, name string, vals ...any) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, v := range vals {
			switch x := v.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", x)
			case bool:
				fmt.Fprintf(&b, "bool(%v)\n", x)
			case uint8:
				fmt.Fprintf(&b, "byte(%d)\n", x)
			case uint32:
				fmt.Fprintf(&b, "uint32(%d)\n", x)
			}
		}
		d := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		b := files[n]
		info, err := Inspect(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		meta, bat := int64(info.MetaRegion.FileOffset), int64(info.BATRegion.FileOffset)
		// Structure pages only: header section, log, metadata, BAT, bitmaps.
		// (first 32 KiB of the log, table and first item page of the
		// metadata, first 64 KiB of the BAT) to keep the seeds small.
		keep := func(off int64) bool {
			return off < MiB+32*1024 || (off >= meta && off < meta+rdMetaTableSize+4096) || (off >= bat && off < bat+64*1024)
		}
		write("FuzzInspect", n, rdtEncodeSparse(b, keep))
		write("FuzzHeader", n, append(bytes.Clone(b[Header1Offset:Header1Offset+HeaderSize]), bytes.TrimRight(b[Header2Offset:Header2Offset+HeaderSize], "\x00")...), false)
		write("FuzzRegionTable", n, bytes.TrimRight(b[RegionTable1Off:RegionTable1Off+RegionTableSize], "\x00"), false)
		write("FuzzMetadata", n, bytes.TrimRight(b[meta:meta+rdMetaTableSize], "\x00"), bytes.TrimRight(b[meta+rdMetaTableSize:meta+rdMetaTableSize+4096], "\x00"))
		md := info.Metadata
		lssSel := uint8(0)
		if md.LogicalSectorSize == 4096 {
			lssSel = 1
		}
		bsSel := uint8(0)
		for MiB<<bsSel != md.BlockSize {
			bsSel++
		}
		vs := uint32(min(md.VirtualSize, 1<<32-1))
		nbat := min(info.BAT.Entries*8, 16*1024)
		write("FuzzBAT", n, vs, bsSel, lssSel, md.HasParent, bytes.TrimRight(b[bat:bat+nbat], "\x00"))
		if lg := bytes.TrimRight(b[MiB:MiB+32*1024], "\x00"); len(lg) > 0 {
			write("FuzzLog", n, lg, false)
		}
	}
}

// TestReaderFuzzSeedsParse checks that the committed FuzzInspect seeds are
// valid files, so fuzzing starts deep inside the parser, not at its door.
func TestReaderFuzzSeedsParse(t *testing.T) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzInspect", "*"))
	if len(seeds) == 0 {
		t.Fatal("no FuzzInspect seeds")
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		q := strings.TrimSuffix(strings.TrimPrefix(lines[len(lines)-1], "[]byte("), ")")
		data, err := strconv.Unquote(q)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		s := rdtDecodeSparse([]byte(data))
		info, err := Inspect(s, s.size)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
			continue
		}
		if strings.Contains(p, "dirty") && !info.Log.Replayed {
			t.Errorf("%s: log not replayed", p)
		}
	}
}
