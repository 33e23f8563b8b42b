package bench

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/vmvault/vmvault/chunkstore"

	"github.com/vmvault/vmvault/engine"
)

// Scale simulation: the chunk index and the catalog of a full server,
// without the data.
//
// chunkstore does not export its index, so this file opens Badger directly
// with the options of chunkstore/index.go (openIndex) and writes the same
// keys: 'c' || chunk ID -> pack ID [32], u64 offset, u32 stored, u32 raw
// (48 bytes), one WriteBatch per pack with the chunks plus 'p' || pack ID
// -> u32 count, each preceded by the synced 'q' pending mark, as
// chunkstore's commit path does. Keep the two in step when index.go
// changes.

// Scale defaults: the reference server of issue 6 and chunkstore's
// defaults (chunkstore/README.md, "Defaults and why").
const (
	DefaultScaleVMs      = 800
	DefaultScaleDiskSize = 100 << 30 // 100 GiB per VM (one disk)
	DefaultScaleRPs      = 30
	DefaultScaleChunkAvg = 256 << 10
	DefaultScaleFraction = 0.001
	scalePackSize        = 32 << 20 // chunkstore pack size
	scaleLocLen          = 48
	scaleHasBatch        = 1024 // IDs per dedup check (one read txn), like hasMany
)

// ScaleOptions configures RunScale.
type ScaleOptions struct {
	Dir      string  // work directory; the index goes in Dir/index (must not exist or be empty)
	Fraction float64 // part of the server's index to build, (0, 1]
	VMs      int
	DiskSize int64 // bytes per VM (one disk assumed)
	RPs      int   // recovery points kept per VM
	ChunkAvg int64 // average chunk size of the repository
	Dedup    float64
	Seed     uint64
}

func (o *ScaleOptions) defaults() {
	if o.Fraction == 0 {
		o.Fraction = DefaultScaleFraction
	}
	if o.VMs == 0 {
		o.VMs = DefaultScaleVMs
	}
	if o.DiskSize == 0 {
		o.DiskSize = DefaultScaleDiskSize
	}
	if o.RPs == 0 {
		o.RPs = DefaultScaleRPs
	}
	if o.ChunkAvg == 0 {
		o.ChunkAvg = DefaultScaleChunkAvg
	}
	if o.Dedup == 0 {
		o.Dedup = 1
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
}

// ScaleIndex is the measured part: a Badger index of Entries chunks.
type ScaleIndex struct {
	Entries         int64   `json:"entries"`
	Packs           int64   `json:"packs"`
	ChunksPerPack   int64   `json:"chunks_per_pack"`
	InsertSeconds   float64 `json:"insert_seconds"`
	InsertPerSec    float64 `json:"insert_per_sec"`
	LookedUpPresent int64   `json:"looked_up_present"`
	FoundPresent    int64   `json:"found_present"`
	PresentSeconds  float64 `json:"present_seconds"`
	PresentPerSec   float64 `json:"present_per_sec"`
	LookedUpAbsent  int64   `json:"looked_up_absent"`
	FoundAbsent     int64   `json:"found_absent"` // false positives: must be 0
	AbsentSeconds   float64 `json:"absent_seconds"`
	AbsentPerSec    float64 `json:"absent_per_sec"`
	CloseSeconds    float64 `json:"close_seconds"`
	DiskBytes       int64   `json:"disk_bytes"` // apparent size of the index dir after close
	BytesPerEntry   float64 `json:"bytes_per_entry"`
	ReopenSeconds   float64 `json:"reopen_seconds"`
	RSSPeakBytes    int64   `json:"rss_peak_bytes"`    // VmHWM of the process (0 where unknown)
	GoHeapSysBytes  int64   `json:"go_heap_sys_bytes"` // Go heap obtained from the OS (the rest of the RSS is mmap/off-heap)
}

// ScaleProjection extrapolates the index to the full server at one chunk size.
type ScaleProjection struct {
	ChunkAvg      int64   `json:"chunk_avg"`
	UniqueBytes   int64   `json:"unique_bytes"`
	Entries       int64   `json:"entries"`
	IndexBytes    int64   `json:"index_bytes"`
	InsertSeconds float64 `json:"insert_seconds"` // all entries at the measured insert rate
}

// ScaleCatalog estimates the catalog: one pointer file and one manifest per
// recovery point.
type ScaleCatalog struct {
	Assumptions        []string `json:"assumptions"`
	SegmentsPerDisk    int64    `json:"segments_per_disk"`
	ExtentsPerSegment  int64    `json:"extents_per_segment"`
	ExtentJSONBytes    int64    `json:"extent_json_bytes"`
	ManifestBytes      int64    `json:"manifest_bytes"`       // JSON of one RP (one disk)
	ManifestChunks     int64    `json:"manifest_chunks"`      // chunks it is stored as
	PointerBytes       int64    `json:"pointer_bytes"`        // indented JSON pointer file
	PointerFiles       int64    `json:"pointer_files"`        // VMs x RPs
	PointerTotalBytes  int64    `json:"pointer_total_bytes"`  // files only, not FS overhead
	ManifestTotalBytes int64    `json:"manifest_total_bytes"` // raw JSON before dedup/compression
	ManifestEntriesMax int64    `json:"manifest_index_entries_max"`
}

// ScaleReport is the result of RunScale.
type ScaleReport struct {
	Fraction    float64           `json:"fraction"`
	VMs         int               `json:"vms"`
	DiskSize    int64             `json:"disk_size"`
	RPs         int               `json:"rps"`
	ChunkAvg    int64             `json:"chunk_avg"`
	Dedup       float64           `json:"dedup"`
	ServerBytes int64             `json:"server_bytes"`
	Index       ScaleIndex        `json:"index"`
	Projections []ScaleProjection `json:"projections"`
	Catalog     ScaleCatalog      `json:"catalog"`
	Notes       []string          `json:"notes"`
}

// openScaleIndex opens a Badger index with the chunk index's own options.
func openScaleIndex(dir string) (*badger.DB, error) {
	return badger.Open(chunkstore.IndexOptions(dir))
}

// scaleID is the i-th chunk ID of a run: IDs are derived, not kept, so the
// lookup phase can regenerate them without holding them in memory (which
// would inflate the RSS measured). Indexes >= the entry count give IDs
// that were never inserted.
func scaleID(seed uint64, i uint64) [32]byte {
	var b [17]byte
	b[0] = 'i'
	binary.LittleEndian.PutUint64(b[1:], seed)
	binary.LittleEndian.PutUint64(b[9:], i)
	return sha256.Sum256(b[:])
}

// ScaleEntries is the number of index entries RunScale inserts for o.
func ScaleEntries(o ScaleOptions) int64 {
	o.defaults()
	return int64(float64(o.VMs) * float64(o.DiskSize) / o.Dedup / float64(o.ChunkAvg) * o.Fraction)
}

// RunScale builds a fraction of a full server's chunk index in o.Dir/index
// and measures it, then extrapolates it and the catalog to the full server.
func RunScale(ctx context.Context, o ScaleOptions) (*ScaleReport, error) {
	o.defaults()
	if o.Fraction <= 0 || o.Fraction > 1 {
		return nil, fmt.Errorf("bench: fraction %v not in (0, 1]", o.Fraction)
	}
	if o.VMs <= 0 || o.DiskSize <= 0 || o.RPs <= 0 || o.ChunkAvg <= 0 || o.Dedup < 1 {
		return nil, errors.New("bench: vms, disk size, rps and chunk size must be positive and dedup >= 1")
	}
	if o.Dir == "" {
		return nil, errors.New("bench: no work directory")
	}
	n := ScaleEntries(o)
	if n < 1 {
		return nil, fmt.Errorf("bench: fraction %v gives no index entries", o.Fraction)
	}
	r := &ScaleReport{
		Fraction: o.Fraction, VMs: o.VMs, DiskSize: o.DiskSize, RPs: o.RPs, ChunkAvg: o.ChunkAvg,
		Dedup: o.Dedup, ServerBytes: int64(o.VMs) * o.DiskSize,
	}
	dir := filepath.Join(o.Dir, "index")
	if err := scaleIndex(ctx, dir, o, n, &r.Index); err != nil {
		return nil, err
	}
	r.Index.RSSPeakBytes = peakRSS()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.Index.GoHeapSysBytes = int64(ms.HeapSys)

	unique := int64(float64(r.ServerBytes) / o.Dedup)
	for _, cs := range []int64{o.ChunkAvg, 1 << 20} {
		if cs != o.ChunkAvg || len(r.Projections) == 0 {
			e := unique / cs
			p := ScaleProjection{ChunkAvg: cs, UniqueBytes: unique, Entries: e,
				IndexBytes: int64(float64(e) * r.Index.BytesPerEntry)}
			if r.Index.InsertPerSec > 0 {
				p.InsertSeconds = float64(e) / r.Index.InsertPerSec
			}
			r.Projections = append(r.Projections, p)
		}
	}
	c, err := scaleCatalog(o)
	if err != nil {
		return nil, err
	}
	r.Catalog = c
	r.Notes = []string{
		"index: same Badger options and key layout as chunkstore/index.go, opened directly (chunkstore does not export its index)",
		"index: random 32-byte IDs, one synced pending mark + one WriteBatch per 32 MiB pack (as a backup commits packs)",
		"index: lookups are dedup checks in random order, " + strconv.Itoa(scaleHasBatch) + " IDs per read transaction (hasMany)",
		"projection: index bytes scale linearly with entries (bytes/entry measured at this fraction); lookup rates at full size depend on the page cache and are not extrapolated",
		"projection: entries = VMs x disk size / dedup / chunk size; daily churn of the 30 RPs adds entries on top (not modelled)",
		"rss: VmHWM of the whole process (Badger memtables, caches, mmapped tables, Go heap); compare two fractions to see how it grows with the entry count",
	}
	return r, nil
}

func scaleIndex(ctx context.Context, dir string, o ScaleOptions, n int64, x *ScaleIndex) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	db, err := openScaleIndex(dir)
	if err != nil {
		return fmt.Errorf("bench: open index: %w", err)
	}
	defer func() {
		if db != nil {
			if cerr := db.Close(); err == nil && cerr != nil {
				err = cerr
			}
		}
	}()
	perPack := max(int64(scalePackSize)/o.ChunkAvg, 1)
	x.Entries, x.ChunksPerPack = n, perPack
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))

	// Insert.
	start := time.Now()
	val := make([]byte, scaleLocLen)
	for i := int64(0); i < n; {
		if err := ctx.Err(); err != nil {
			return err
		}
		var pack [32]byte
		for j := range pack {
			pack[j] = byte(rng.Uint32())
		}
		pk := append([]byte{'p'}, pack[:]...)
		qk := append([]byte{'q'}, pack[:]...)
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set(qk, nil) }); err != nil {
			return fmt.Errorf("bench: pending mark: %w", err)
		}
		if err := db.Sync(); err != nil {
			return fmt.Errorf("bench: sync: %w", err)
		}
		wb := db.NewWriteBatch()
		cnt := min(perPack, n-i)
		var off uint64
		for j := int64(0); j < cnt; j++ {
			id := scaleID(o.Seed, uint64(i+j))
			raw := uint32(o.ChunkAvg/2 + rng.Int64N(o.ChunkAvg)) // spread around the average
			stored := raw / 2
			copy(val, pack[:])
			binary.LittleEndian.PutUint64(val[32:], off)
			binary.LittleEndian.PutUint32(val[40:], stored)
			binary.LittleEndian.PutUint32(val[44:], raw)
			off += uint64(stored)
			if err := wb.Set(append([]byte{'c'}, id[:]...), append([]byte(nil), val...)); err != nil {
				wb.Cancel()
				return fmt.Errorf("bench: insert: %w", err)
			}
		}
		var c [4]byte
		binary.LittleEndian.PutUint32(c[:], uint32(cnt))
		if err := wb.Set(pk, c[:]); err != nil {
			wb.Cancel()
			return err
		}
		if err := wb.Delete(qk); err != nil {
			wb.Cancel()
			return err
		}
		if err := wb.Flush(); err != nil {
			return fmt.Errorf("bench: insert: %w", err)
		}
		i += cnt
		x.Packs++
	}
	x.InsertSeconds = time.Since(start).Seconds()
	x.InsertPerSec = rate(n, x.InsertSeconds)

	// Present lookups: every inserted ID once, in random order.
	perm := make([]uint32, n)
	for i := range perm {
		perm[i] = uint32(i)
	}
	rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
	start = time.Now()
	found, err := scaleHas(ctx, db, n, func(k int64) [32]byte { return scaleID(o.Seed, uint64(perm[k])) })
	if err != nil {
		return err
	}
	x.PresentSeconds = time.Since(start).Seconds()
	x.LookedUpPresent, x.FoundPresent, x.PresentPerSec = n, found, rate(n, x.PresentSeconds)
	perm = nil

	// Absent lookups: as many IDs never inserted.
	start = time.Now()
	found, err = scaleHas(ctx, db, n, func(k int64) [32]byte { return scaleID(o.Seed, uint64(n+k)) })
	if err != nil {
		return err
	}
	x.AbsentSeconds = time.Since(start).Seconds()
	x.LookedUpAbsent, x.FoundAbsent, x.AbsentPerSec = n, found, rate(n, x.AbsentSeconds)

	start = time.Now()
	err, db = db.Close(), nil
	if err != nil {
		return fmt.Errorf("bench: close index: %w", err)
	}
	x.CloseSeconds = time.Since(start).Seconds()
	if x.DiskBytes, err = dirBytes(dir); err != nil {
		return err
	}
	x.BytesPerEntry = float64(x.DiskBytes) / float64(n)

	start = time.Now()
	if db, err = openScaleIndex(dir); err != nil {
		return fmt.Errorf("bench: reopen index: %w", err)
	}
	x.ReopenSeconds = time.Since(start).Seconds()
	return nil
}

// scaleHas checks n IDs in batches of scaleHasBatch per read transaction
// and returns how many were found.
func scaleHas(ctx context.Context, db *badger.DB, n int64, id func(int64) [32]byte) (int64, error) {
	var found int64
	k := make([]byte, 33)
	k[0] = 'c'
	for i := int64(0); i < n; i += scaleHasBatch {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		end := min(i+scaleHasBatch, n)
		err := db.View(func(txn *badger.Txn) error {
			for j := i; j < end; j++ {
				v := id(j)
				copy(k[1:], v[:])
				_, err := txn.Get(k)
				if err == nil {
					found++
				} else if !errors.Is(err, badger.ErrKeyNotFound) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("bench: lookup: %w", err)
		}
	}
	return found, nil
}

func rate(n int64, s float64) float64 {
	if s <= 0 {
		return 0
	}
	return float64(n) / s
}

// dirBytes is the apparent size of the files under dir (Badger truncates
// its preallocated value log at close, so this is what it occupies).
func dirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			total += fi.Size()
		}
		return nil
	})
	return total, err
}

// peakRSS is VmHWM of /proc/self/status, or 0 where there is none.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// scaleCatalog sizes the catalog files with engine's own structures:
// a manifest of one disk, fully allocated, cut into engine.SegmentSize
// segments of ~SegmentSize/ChunkAvg extents (+1: CDC chunks straddle
// segment boundaries and are split into two extents), and the pointer file
// that refers to it.
func scaleCatalog(o ScaleOptions) (ScaleCatalog, error) {
	c := ScaleCatalog{}
	c.SegmentsPerDisk = (o.DiskSize + engine.SegmentSize - 1) / engine.SegmentSize
	c.ExtentsPerSegment = engine.SegmentSize/o.ChunkAvg + 1
	t := time.Date(2026, 11, 26, 22, 0, 0, 0, time.UTC)
	var id engine.ChunkID
	for i := range id {
		id[i] = byte(i * 37)
	}
	// A segment near the end of the disk, so offsets have their full width.
	seg := engine.Segment{Off: o.DiskSize - engine.SegmentSize, Hash: strings.Repeat("ab", 32)}
	step := engine.SegmentSize / c.ExtentsPerSegment
	for i := int64(0); i < c.ExtentsPerSegment; i++ {
		e := engine.Extent{Off: seg.Off + i*step, Len: step, ID: id}
		if i == 0 {
			e.ChunkOff = o.ChunkAvg / 3 // the tail of a straddling chunk
		}
		seg.Extents = append(seg.Extents, e)
	}
	sb, err := json.Marshal(seg)
	if err != nil {
		return c, err
	}
	eb, err := json.Marshal(seg.Extents[1])
	if err != nil {
		return c, err
	}
	c.ExtentJSONBytes = int64(len(eb))
	dm := engine.DiskManifest{
		Name: "vm0001-os.vhdx", Source: `D:\Hyper-V\vm0001\Virtual Hard Disks\vm0001-os.vhdx`,
		SourceFiles: []engine.SourceFile{{Path: `D:\Hyper-V\vm0001\Virtual Hard Disks\vm0001-os.vhdx`, Size: o.DiskSize, ModTime: t.UnixNano()}},
		SegmentSize: engine.SegmentSize, Segments: []engine.Segment{seg},
		BytesAllocated: o.DiskSize, BytesData: o.DiskSize, BytesRead: o.DiskSize / 50,
		BytesChunked: o.DiskSize / 50, BytesNew: o.DiskSize / 100, BytesStored: o.DiskSize / 200,
	}
	dm.Identity.Format = "vhdx"
	dm.Identity.VirtualSize = o.DiskSize
	dm.Identity.LogicalSectorSize, dm.Identity.PhysicalSectorSize, dm.Identity.BlockSize = 512, 4096, 32<<20
	dm.Identity.ChainLength = 1
	m := engine.Manifest{
		Version: engine.ManifestVersion, ID: "20261126T220000Z", VM: "vm0001",
		VMGUID: "3f2504e0-4f89-11d3-9a0c-0305e82c3301", Group: "production", Time: t, EndTime: t.Add(7 * time.Minute),
		Consistency: engine.AppConsistent, Host: "hv-host-01", Full: false, Parent: "20261125T220000Z",
		Sources: []string{`D:\Hyper-V\vm0001`},
		Config: []engine.ConfigFile{{Name: "vm0001.vmcx", Source: `D:\Hyper-V\vm0001\Virtual Machines\x.vmcx`,
			Size: 80 << 10, ModTime: t, SHA256: strings.Repeat("cd", 32), Chunks: []engine.ChunkRef{{ID: id, Len: 80 << 10}}}},
		Disks:     []engine.DiskManifest{dm},
		BytesRead: dm.BytesRead, BytesNew: dm.BytesNew, BytesStored: dm.BytesStored,
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return c, err
	}
	c.ManifestBytes = int64(len(mb)) + (c.SegmentsPerDisk-1)*(int64(len(sb))+1)
	c.ManifestChunks = (c.ManifestBytes + o.ChunkAvg - 1) / o.ChunkAvg
	p := engine.Pointer{
		Version: engine.ManifestVersion, ID: m.ID, VM: m.VM, VMGUID: m.VMGUID, Group: m.Group,
		Time: m.Time, EndTime: m.EndTime, Consistency: m.Consistency, Host: m.Host, Full: m.Full,
		Disks: []engine.DiskSummary{{Name: dm.Name, VirtualSize: o.DiskSize, Format: "vhdx",
			BytesData: dm.BytesData, BytesRead: dm.BytesRead, BytesNew: dm.BytesNew}},
		ConfigFiles: 1, BytesRead: m.BytesRead, BytesNew: m.BytesNew, BytesStored: m.BytesStored,
		ManifestSize: c.ManifestBytes, ManifestSHA256: strings.Repeat("ef", 32),
	}
	for i := int64(0); i < c.ManifestChunks; i++ {
		p.Manifest = append(p.Manifest, engine.ChunkRef{ID: id, Len: o.ChunkAvg})
	}
	pb, err := json.MarshalIndent(p, "", "  ") // as catalog.commitPointer writes it
	if err != nil {
		return c, err
	}
	c.PointerBytes = int64(len(pb))
	c.PointerFiles = int64(o.VMs) * int64(o.RPs)
	c.PointerTotalBytes = c.PointerFiles * c.PointerBytes
	c.ManifestTotalBytes = c.PointerFiles * c.ManifestBytes
	c.ManifestEntriesMax = c.PointerFiles * c.ManifestChunks
	c.Assumptions = []string{
		"one virtual disk per VM, fully allocated (every segment holds data)",
		fmt.Sprintf("segments of engine.SegmentSize (%d MiB), %d extents each (SegmentSize/chunk avg + 1 split chunk)", engine.SegmentSize>>20, c.ExtentsPerSegment),
		"manifest size is its compact JSON (json.Marshal, as engine/backup.go stores it) before chunkstore's zstd and dedup; IDs are 64 hex digits",
		"pointer file is indented JSON (as catalog.commitPointer writes it), one config file, one disk summary",
		"manifest index entries are an upper bound: consecutive manifests of a VM share most of their chunks, so dedup keeps far fewer",
	}
	return c, nil
}

// WriteTable prints r as a readable table.
func (r *ScaleReport) WriteTable(w io.Writer) error {
	x := &r.Index
	var b strings.Builder
	fmt.Fprintf(&b, "vmvault bench --scale: %d VMs x %s, %d RPs, chunk avg %s, dedup %.2f, fraction %g\n",
		r.VMs, sizeStr(r.DiskSize), r.RPs, sizeStr(r.ChunkAvg), r.Dedup, r.Fraction)
	fmt.Fprintf(&b, "\nmeasured index (Badger, chunkstore options)\n")
	row := func(k, v string) { fmt.Fprintf(&b, "  %-28s %s\n", k, v) }
	row("entries inserted", fmt.Sprintf("%d (%d packs of %d)", x.Entries, x.Packs, x.ChunksPerPack))
	row("insert", fmt.Sprintf("%.2f s, %.0f entries/s", x.InsertSeconds, x.InsertPerSec))
	row("lookups present", fmt.Sprintf("%d, %d found, %.2f s, %.0f/s", x.LookedUpPresent, x.FoundPresent, x.PresentSeconds, x.PresentPerSec))
	row("lookups absent", fmt.Sprintf("%d, %d found, %.2f s, %.0f/s", x.LookedUpAbsent, x.FoundAbsent, x.AbsentSeconds, x.AbsentPerSec))
	row("close", fmt.Sprintf("%.2f s", x.CloseSeconds))
	row("size on disk", fmt.Sprintf("%s (%.1f bytes/entry)", sizeStr(x.DiskBytes), x.BytesPerEntry))
	row("reopen (populated)", fmt.Sprintf("%.3f s", x.ReopenSeconds))
	row("peak RSS (VmHWM)", fmt.Sprintf("%s (Go heap from OS %s)", sizeStr(x.RSSPeakBytes), sizeStr(x.GoHeapSysBytes)))
	fmt.Fprintf(&b, "\nextrapolated to the full server (%s logical)\n", sizeStr(r.ServerBytes))
	for _, p := range r.Projections {
		row("chunk avg "+sizeStr(p.ChunkAvg), fmt.Sprintf("%d entries, index %s, insert %s at measured rate",
			p.Entries, sizeStr(p.IndexBytes), (time.Duration(p.InsertSeconds)*time.Second).String()))
	}
	c := &r.Catalog
	fmt.Fprintf(&b, "\ncatalog (%d VMs x %d RPs)\n", r.VMs, r.RPs)
	row("pointer file", fmt.Sprintf("%s each, %d files, %s total", sizeStr(c.PointerBytes), c.PointerFiles, sizeStr(c.PointerTotalBytes)))
	row("manifest per RP", fmt.Sprintf("%s (%d segments x %d extents, ~%d B/extent), %d chunks",
		sizeStr(c.ManifestBytes), c.SegmentsPerDisk, c.ExtentsPerSegment, c.ExtentJSONBytes, c.ManifestChunks))
	row("manifests total (raw)", fmt.Sprintf("%s, at most %d index entries", sizeStr(c.ManifestTotalBytes), c.ManifestEntriesMax))
	fmt.Fprintf(&b, "\nassumptions\n")
	for _, s := range append(append([]string(nil), c.Assumptions...), r.Notes...) {
		fmt.Fprintf(&b, "  - %s\n", s)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func sizeStr(n int64) string {
	const u = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n)/1024, 0
	for f >= 1024 && i < len(u)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, u[i])
}
