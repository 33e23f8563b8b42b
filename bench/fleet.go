package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// The synthetic fleet: N VMs, each a dynamic VHDX (32 MiB blocks, as
// Hyper-V makes them) of a GPT disk with an NTFS partition (a quarter of
// the disk) and an ext4 one (the rest but the last MiB), plus churn
// generations of each.
//
// Real tools build every byte the backups read: mkntfs and an ntfs-3g
// mount of the partition image file for NTFS, mkfs.ext4 -d and debugfs for
// ext4, sgdisk for the GPT, and qemu-img convert, which concatenates the
// pieces (GPT head, NTFS, ext4, GPT tail) into the VHDX without a loop
// device or a full-size raw copy.
//
// Content per VM, as fractions of the virtual size so that the same recipe
// serves a 256 MiB smoke disk and an 8 GiB bench disk:
//   - an OS-like tree copied from the machine's /usr/lib (as Windows/System32)
//     and /usr/share (as Program Files), the same in every VM: cross-VM
//     dedup has to find it at other offsets, because each VM first writes
//     a different amount of its own data;
//   - per-VM compressible text (logs), incompressible random data (a
//     "video"), a zero-filled file (clusters the guest allocated but never
//     wrote) and a random pagefile.sys in the NTFS root;
//   - on ext4, a few shared files plus per-VM random data.
//
// A churn generation edits files in place, appends to logs, adds files,
// deletes some, rewrites part of pagefile.sys and changes the ext4 volume:
// about Churn of the allocated bytes. Program Files is never churned: the
// item-level copy stage copies it out of the mount and compares it with the
// staged tree.
const fleetVersion = 2 // part of the cache key: bump when the recipe changes

// Content fractions of the virtual size.
const (
	fracOS       = 0.04
	fracLogs     = 0.01
	fracRandom   = 0.015
	fracPagefile = 0.015
	fracZero     = 0.005
	fracExt4     = 0.005
	// The NTFS volume gets a quarter of the disk, the ext4 data volume
	// the rest but 2 MiB. ntfs-3g spreads file data thinly over the whole
	// volume (a 32 MiB VHDX block per MiB or two of data), so a
	// disk-sized NTFS turns 0.8 GB of data into a 5.6 GB .vhdx, which is
	// neither what Windows does nor fair to file-level peers that read
	// every byte of the .vhdx; mkfs.ext4 -d packs its data.
	fracNTFS  = 0.25
	vhdxBlock = 32 << 20
	osMaxFile = 8 << 20 // larger /usr files are skipped: many files, not a few huge ones
)

// ItemDir is the NTFS folder (shared OS content, never churned) that the
// item-level copy stage copies from the mount.
const ItemDir = "Program Files"

// Fleet defaults.
const (
	DefaultVMs         = 4
	DefaultSize        = 8 << 30
	DefaultGenerations = 3
	DefaultChurn       = 0.04
)

// FleetOptions choose the fleet. The zero value of a field takes its default.
type FleetOptions struct {
	// Dir is the cache root: the fleet lives in Dir/fleet-<key>, key a hash
	// of the other fields and the recipe version, so runs and sweeps with
	// the same parameters reuse it.
	Dir         string                        `json:"-"`
	VMs         int                           `json:"vms"`
	Size        int64                         `json:"size"`
	Generations int                           `json:"generations"` // churn generations after the first image
	Churn       float64                       `json:"churn"`       // fraction of allocated bytes changed per generation
	Seed        uint64                        `json:"seed"`
	Logf        func(format string, a ...any) `json:"-"`
}

func (o *FleetOptions) defaults() {
	if o.VMs == 0 {
		o.VMs = DefaultVMs
	}
	if o.Size == 0 {
		o.Size = DefaultSize
	}
	if o.Churn == 0 {
		o.Churn = DefaultChurn
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

func (o *FleetOptions) validate() error {
	if o.VMs < 1 || o.VMs > 1000 {
		return fmt.Errorf("bench: fleet: %d VMs, want 1..1000", o.VMs)
	}
	if o.Size < 128<<20 || o.Size%(1<<20) != 0 {
		return fmt.Errorf("bench: fleet: size %d, want a multiple of 1 MiB of at least 128 MiB", o.Size)
	}
	if o.Generations < 0 || o.Generations > 100 {
		return fmt.Errorf("bench: fleet: %d generations, want 0..100", o.Generations)
	}
	if o.Churn <= 0 || o.Churn > 0.5 {
		return fmt.Errorf("bench: fleet: churn %g, want (0, 0.5]", o.Churn)
	}
	return nil
}

func (o FleetOptions) key() string {
	b, _ := json.Marshal(struct {
		V int
		O FleetOptions
	}{fleetVersion, o})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:6])
}

// FleetTools are the programs the fleet builder runs.
var FleetTools = []string{"qemu-img", "sgdisk", "mkntfs", "ntfs-3g", "mkfs.ext4", "debugfs", "umount"}

// Fleet is a built fleet (fleet.json in its directory).
type Fleet struct {
	Dir          string       `json:"-"`
	Key          string       `json:"key"`
	Options      FleetOptions `json:"options"`
	OSFiles      int          `json:"os_files"`
	OSBytes      int64        `json:"os_bytes"`
	ItemFiles    int          `json:"item_files"` // files under ItemDir
	ItemBytes    int64        `json:"item_bytes"`
	BuildSeconds float64      `json:"build_seconds"`
	Cached       bool         `json:"cached"` // taken from the cache by this run
	VMs          []FleetVM    `json:"vms"`
}

// FleetVM is one VM: its image per generation.
type FleetVM struct {
	Name string       `json:"name"`
	Gens []FleetImage `json:"gens"`
}

// FleetImage is one generation's VHDX.
type FleetImage struct {
	Gen            int         `json:"gen"`
	Path           string      `json:"path"` // relative to the fleet directory
	VirtualBytes   int64       `json:"virtual_bytes"`
	AllocatedBytes int64       `json:"allocated_bytes"` // guest ranges that may hold data (BAT minus host holes)
	FileBytes      int64       `json:"file_bytes"`      // apparent size of the .vhdx (what file-level tools read)
	Churn          *ChurnStats `json:"churn,omitempty"`
}

// ChurnStats says what a generation changed in one VM.
type ChurnStats struct {
	BytesEdited   int64 `json:"bytes_edited"`
	BytesAdded    int64 `json:"bytes_added"`
	BytesDeleted  int64 `json:"bytes_deleted"`
	BytesPagefile int64 `json:"bytes_pagefile"`
	FilesEdited   int   `json:"files_edited"`
	FilesAdded    int   `json:"files_added"`
	FilesDeleted  int   `json:"files_deleted"`
}

// Image returns the absolute path of a VM's image of generation gen.
func (f *Fleet) Image(vm, gen int) string { return filepath.Join(f.Dir, f.VMs[vm].Gens[gen].Path) }

// OSDir is the staged OS tree (the oracle of the item-level copy).
func (f *Fleet) OSDir() string { return filepath.Join(f.Dir, "os") }

// GenTotals sums the virtual and allocated bytes of generation gen over the VMs.
func (f *Fleet) GenTotals(gen int) (virtual, allocated, file int64) {
	for _, vm := range f.VMs {
		g := vm.Gens[gen]
		virtual += g.VirtualBytes
		allocated += g.AllocatedBytes
		file += g.FileBytes
	}
	return
}

// BuildFleet returns the fleet described by o, from the cache when it was
// built before, otherwise built into a temporary sibling and renamed, so a
// half-built fleet is never used.
func BuildFleet(ctx context.Context, o FleetOptions) (*Fleet, error) {
	o.defaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	for _, t := range FleetTools {
		if _, err := exec.LookPath(t); err != nil {
			return nil, fmt.Errorf("bench: fleet: %s not found (Debian: qemu-utils gdisk ntfs-3g e2fsprogs): %w", t, err)
		}
	}
	if err := needFUSE(); err != nil {
		return nil, fmt.Errorf("bench: fleet: the NTFS volumes are filled through an ntfs-3g mount: %w", err)
	}
	key := o.key()
	dir := filepath.Join(o.Dir, "fleet-"+key)
	if f, err := loadFleet(dir); err == nil {
		f.Cached = true
		o.Logf("fleet: cached %s", dir)
		return f, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	start := time.Now()
	b := &fleetBuilder{o: o, dir: tmp}
	f, err := b.build(ctx)
	if err != nil {
		b.unmountAll()
		os.RemoveAll(tmp)
		return nil, err
	}
	f.Key, f.Options, f.BuildSeconds = key, o, time.Since(start).Seconds()
	js, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "fleet.json"), js, 0o644); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	f.Dir = dir
	o.Logf("fleet: built %s in %.1fs", dir, f.BuildSeconds)
	return f, nil
}

func loadFleet(dir string) (*Fleet, error) {
	b, err := os.ReadFile(filepath.Join(dir, "fleet.json"))
	if err != nil {
		return nil, err
	}
	var f Fleet
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	f.Dir = dir
	for i := range f.VMs {
		for _, g := range f.VMs[i].Gens {
			if _, err := os.Stat(filepath.Join(dir, g.Path)); err != nil {
				return nil, err
			}
		}
	}
	return &f, nil
}

// needFUSE reports why FUSE mounts cannot work here, or nil.
func needFUSE() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("FUSE mounts need root here")
	}
	return nil
}

type osFile struct {
	rel  string // slash path inside the NTFS volume
	size int64
}

type vmState struct {
	idx        int
	name       string
	work       string // per-VM scratch: head/tail/ntfs/ext4 images
	ntfsStart  int64  // sectors
	ntfsSec    int64
	ext4Start  int64
	ext4Sec    int64
	windows    []osFile // live churnable OS files (Windows/...)
	logs       []string // NTFS paths of log files
	ext4Shared []string // ext4 paths of shared files still present
	pagefile   int64
}

type fleetBuilder struct {
	o      FleetOptions
	dir    string
	osList []osFile
	mounts []*fuseProc
}

func (b *fleetBuilder) logf(format string, a ...any) { b.o.Logf(format, a...) }

func (b *fleetBuilder) build(ctx context.Context) (*Fleet, error) {
	f := &Fleet{}
	osBudget := int64(float64(b.o.Size) * fracOS)
	t := time.Now()
	if err := b.stageOS(osBudget); err != nil {
		return nil, err
	}
	for _, of := range b.osList {
		f.OSFiles++
		f.OSBytes += of.size
		if strings.HasPrefix(of.rel, ItemDir+"/") {
			f.ItemFiles++
			f.ItemBytes += of.size
		}
	}
	b.logf("fleet: staged %d OS files (%s) from /usr in %.1fs", f.OSFiles, fmtMB(f.OSBytes), time.Since(t).Seconds())
	for i := range b.o.VMs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		vm, err := b.newVM(ctx, i)
		if err != nil {
			return nil, err
		}
		fv := FleetVM{Name: vm.name}
		for gen := 0; gen <= b.o.Generations; gen++ {
			t := time.Now()
			var cs *ChurnStats
			if gen == 0 {
				err = b.fillVM(ctx, vm)
			} else {
				var st ChurnStats
				st, err = b.churnVM(ctx, vm, gen, fv.Gens[gen-1].AllocatedBytes)
				cs = &st
			}
			if err != nil {
				return nil, err
			}
			img, err := b.convert(ctx, vm, gen)
			if err != nil {
				return nil, err
			}
			img.Churn = cs
			fv.Gens = append(fv.Gens, img)
			b.logf("fleet: %s gen %d: %s allocated of %s in %.1fs", vm.name, gen, fmtMB(img.AllocatedBytes), fmtMB(img.VirtualBytes), time.Since(t).Seconds())
		}
		f.VMs = append(f.VMs, fv)
		// The partition images were only needed to make the next generation.
		if err := os.RemoveAll(vm.work); err != nil {
			return nil, fmt.Errorf("bench: fleet: %w", err)
		}
	}
	return f, nil
}

// stageOS copies a deterministic selection of /usr into b.dir/os: files in
// lexical walk order, up to budget/2 bytes from each source root.
func (b *fleetBuilder) stageOS(budget int64) error {
	roots := []struct{ src, dst string }{{"/usr/lib", "Windows/System32"}, {"/usr/share", ItemDir}}
	for _, r := range roots {
		left := budget / 2
		err := filepath.WalkDir(r.src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable parts of /usr are simply not used
			}
			if left <= 0 {
				return filepath.SkipAll
			}
			if d.IsDir() {
				if badNTFSName(d.Name()) {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() || badNTFSName(d.Name()) {
				return nil
			}
			fi, err := d.Info()
			if err != nil || fi.Size() == 0 || fi.Size() > osMaxFile {
				return nil
			}
			rel, err := filepath.Rel(r.src, p)
			if err != nil {
				return nil
			}
			ntfsRel := r.dst + "/" + filepath.ToSlash(rel)
			n, err := copyFile(p, filepath.Join(b.dir, "os", filepath.FromSlash(ntfsRel)))
			if err != nil {
				return nil // unreadable file: skip it
			}
			b.osList = append(b.osList, osFile{ntfsRel, n})
			left -= n
			return nil
		})
		if err != nil {
			return fmt.Errorf("bench: fleet: stage %s: %w", r.src, err)
		}
	}
	if len(b.osList) == 0 {
		return errors.New("bench: fleet: no readable files under /usr/lib or /usr/share")
	}
	return nil
}

// badNTFSName rejects names Windows could not hold, so the tree is one a
// Windows guest could have.
func badNTFSName(n string) bool {
	return strings.ContainsAny(n, `\:*?"<>|`) || strings.HasSuffix(n, ".") || strings.HasSuffix(n, " ")
}

func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return n, err
}

// rng is the deterministic generator for one purpose of one VM.
func (b *fleetBuilder) rng(parts ...any) *rand.ChaCha8 {
	h := sha256.Sum256(fmt.Append(nil, b.o.Seed, parts))
	return rand.NewChaCha8(h)
}

func (b *fleetBuilder) newVM(ctx context.Context, i int) (*vmState, error) {
	vm := &vmState{idx: i, name: fmt.Sprintf("vm%d", i)}
	vm.work = filepath.Join(b.dir, vm.name, "work")
	if err := os.MkdirAll(vm.work, 0o755); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	total := b.o.Size / 512
	vm.ntfsStart = 2048
	vm.ntfsSec = int64(float64(total)*fracNTFS) / 2048 * 2048
	vm.ext4Start = vm.ntfsStart + vm.ntfsSec
	vm.ext4Sec = total - 2048 - vm.ext4Start
	// The GPT of the whole disk, made on a sparse full-size file; only its
	// first and last MiB (protective MBR + primary GPT, backup GPT) are kept.
	disk := filepath.Join(vm.work, "gpt.disk")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	if err := os.Truncate(disk, b.o.Size); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	g := func(k int) string { return guidOf(b.rng(vm.name, "guid", k)) }
	if _, err := run(ctx, "", "sgdisk", "-o", "-U", g(0),
		fmt.Sprintf("-n1:%d:%d", vm.ntfsStart, vm.ext4Start-1), "-t1:0700", "-c1:Windows", "-u1:"+g(1),
		fmt.Sprintf("-n2:%d:%d", vm.ext4Start, vm.ext4Start+vm.ext4Sec-1), "-t2:8300", "-c2:data", "-u2:"+g(2),
		disk); err != nil {
		return nil, err
	}
	if err := extract(disk, filepath.Join(vm.work, "head.raw"), 0, 1<<20); err != nil {
		return nil, err
	}
	if err := extract(disk, filepath.Join(vm.work, "tail.raw"), b.o.Size-(1<<20), 1<<20); err != nil {
		return nil, err
	}
	return vm, os.Remove(disk)
}

func guidOf(r *rand.ChaCha8) string {
	var u [16]byte
	r.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func extract(src, dst string, off, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(in, off, n)); err != nil {
		out.Close()
		return fmt.Errorf("bench: fleet: %w", err)
	}
	return out.Close()
}

// fillVM makes generation 0: mkntfs + ntfs-3g fill, mkfs.ext4 -d.
func (b *fleetBuilder) fillVM(ctx context.Context, vm *vmState) error {
	ntfs := filepath.Join(vm.work, "ntfs.img")
	if err := sparseFile(ntfs, vm.ntfsSec*512); err != nil {
		return err
	}
	// -Q quick (no zeroing), -p/-H/-S so the boot sector's geometry and
	// hidden sectors match the partition, as Windows writes them.
	if _, err := run(ctx, "", "mkntfs", "-F", "-Q", "-q", "-s", "512", "-c", "4096",
		"-p", fmt.Sprint(vm.ntfsStart), "-H", "255", "-S", "63", "-L", strings.ToUpper(vm.name), ntfs); err != nil {
		return err
	}
	mnt, err := b.mountNTFS(ctx, vm, ntfs)
	if err != nil {
		return err
	}
	size := float64(b.o.Size)
	// Own data first, a different amount per VM, so the shared tree lands
	// at a different place in every VM.
	logBytes := int64(size * fracLogs)
	first := logBytes * int64(vm.idx%4+1) / 5
	logDir := "Users/" + vm.name + "/AppData/Logs"
	if err := b.writeLogs(mnt.dir, vm, logDir, "a", first); err != nil {
		return b.abort(mnt, err)
	}
	for _, of := range b.osList {
		if _, err := copyFile(filepath.Join(b.dir, "os", filepath.FromSlash(of.rel)), filepath.Join(mnt.dir, filepath.FromSlash(of.rel))); err != nil {
			return b.abort(mnt, fmt.Errorf("bench: fleet: copy %s into NTFS: %w", of.rel, err))
		}
		if strings.HasPrefix(of.rel, "Windows/") {
			vm.windows = append(vm.windows, of)
		}
	}
	if err := b.writeLogs(mnt.dir, vm, logDir, "b", logBytes-first); err != nil {
		return b.abort(mnt, err)
	}
	r := b.rng(vm.name, "video")
	if err := writeRandom(filepath.Join(mnt.dir, "Users", vm.name, "Videos", "video.mp4"), int64(size*fracRandom), r); err != nil {
		return b.abort(mnt, err)
	}
	if err := writeZeros(filepath.Join(mnt.dir, "ProgramData", "reserved.dat"), int64(size*fracZero)); err != nil {
		return b.abort(mnt, err)
	}
	vm.pagefile = int64(size*fracPagefile) / 4096 * 4096
	if err := writeRandom(filepath.Join(mnt.dir, "pagefile.sys"), vm.pagefile, b.rng(vm.name, "pagefile")); err != nil {
		return b.abort(mnt, err)
	}
	if err := mnt.unmount(); err != nil {
		return err
	}

	// ext4: shared files from Program Files and per-VM random data.
	src := filepath.Join(vm.work, "ext4src")
	half := int64(size*fracExt4) / 2
	var got int64
	for _, of := range b.osList {
		if got >= half {
			break
		}
		if !strings.HasPrefix(of.rel, ItemDir+"/") {
			continue
		}
		rel := "shared/" + strings.TrimPrefix(of.rel, ItemDir+"/")
		dst := filepath.Join(src, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("bench: fleet: %w", err)
		}
		if err := os.Link(filepath.Join(b.dir, "os", filepath.FromSlash(of.rel)), dst); err != nil {
			return fmt.Errorf("bench: fleet: %w", err)
		}
		vm.ext4Shared = append(vm.ext4Shared, "/"+rel)
		got += of.size
	}
	if err := writeRandom(filepath.Join(src, "data", "db.bin"), half, b.rng(vm.name, "ext4")); err != nil {
		return err
	}
	ext4 := filepath.Join(vm.work, "ext4.img")
	if err := sparseFile(ext4, vm.ext4Sec*512); err != nil {
		return err
	}
	if _, err := run(ctx, "", "mkfs.ext4", "-F", "-q", "-b", "4096", "-L", "DATA", "-U", guidOf(b.rng(vm.name, "ext4uuid")),
		"-E", "root_owner=0:0", "-d", src, ext4); err != nil {
		return err
	}
	return os.RemoveAll(src)
}

// writeLogs writes n bytes of log text in files of up to 4 MiB.
func (b *fleetBuilder) writeLogs(root string, vm *vmState, dir, tag string, n int64) error {
	r := rand.New(b.rng(vm.name, "logs", tag))
	for i := 0; n > 0; i++ {
		sz := min(n, 4<<20)
		rel := fmt.Sprintf("%s/%s-%03d.log", dir, tag, i)
		if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(dir)), 0o755); err != nil {
			return fmt.Errorf("bench: fleet: %w", err)
		}
		if err := os.WriteFile(filepath.Join(root, filepath.FromSlash(rel)), logText(r, vm.name, sz), 0o644); err != nil {
			return fmt.Errorf("bench: fleet: %w", err)
		}
		vm.logs = append(vm.logs, rel)
		n -= sz
	}
	return nil
}

var logWords = strings.Fields(`alpha beta gamma delta service request session login logout
commit rollback checkpoint flush replicate snapshot backup restore mount alice bob carol
dave eve frank grace heidi ivan judy mallory oscar peggy trent victor walter ok warn error
retry timeout denied granted GET PUT POST DELETE /api/v1/items /api/v1/users /health`)

// logText returns n bytes of log-like lines: compressible (~4-6x with
// zstd) but unique per VM and per file.
func logText(r *rand.Rand, vm string, n int64) []byte {
	var b bytes.Buffer
	b.Grow(int(n) + 256)
	for int64(b.Len()) < n {
		fmt.Fprintf(&b, "2025-%02d-%02d %02d:%02d:%02d.%03d %s %s[%d]: %s %s user=%s bytes=%d status=%s\n",
			r.IntN(12)+1, r.IntN(28)+1, r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1000), vm,
			logWords[r.IntN(len(logWords))], r.IntN(65536), logWords[r.IntN(len(logWords))],
			logWords[r.IntN(len(logWords))], logWords[r.IntN(len(logWords))], r.IntN(1<<20),
			logWords[r.IntN(len(logWords))])
	}
	return b.Bytes()[:n]
}

func writeRandom(p string, n int64, r *rand.ChaCha8) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		r.Read(buf[:k])
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return fmt.Errorf("bench: fleet: write %s: %w", p, err)
		}
		n -= k
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	return nil
}

// writeZeros writes n zero bytes for real (not a sparse file): clusters the
// guest allocated and left zero.
func writeZeros(p string, n int64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return fmt.Errorf("bench: fleet: write %s: %w", p, err)
		}
		n -= k
	}
	return f.Close()
}

func sparseFile(p string, n int64) error {
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("bench: fleet: %w", err)
	}
	if err := f.Truncate(n); err != nil {
		f.Close()
		return fmt.Errorf("bench: fleet: %w", err)
	}
	return f.Close()
}

// churnVM changes about Churn x alloc bytes of the VM in place: part of
// pagefile.sys rewritten, files edited in place and logs appended, new
// files added, OS files deleted, and on ext4 a file replaced.
func (b *fleetBuilder) churnVM(ctx context.Context, vm *vmState, gen int, alloc int64) (ChurnStats, error) {
	var st ChurnStats
	budget := int64(b.o.Churn * float64(alloc))
	cr := b.rng(vm.name, "churn", gen)
	r := rand.New(cr)
	mnt, err := b.mountNTFS(ctx, vm, filepath.Join(vm.work, "ntfs.img"))
	if err != nil {
		return st, err
	}
	root := mnt.dir

	// pagefile.sys: a quarter of the budget, one contiguous region as the
	// memory manager writes it.
	pf := min(budget/4, vm.pagefile) / 4096 * 4096
	if pf > 0 {
		off := r.Int64N(vm.pagefile-pf+1) / 4096 * 4096
		if err := overwrite(filepath.Join(root, "pagefile.sys"), off, pf, cr); err != nil {
			return st, b.abort(mnt, err)
		}
		st.BytesPagefile = pf
	}
	// In-place edits of OS files and appends to logs: a quarter.
	for left, tries := budget/4, 0; left > 0 && len(vm.windows) > 0 && tries < 100000; tries++ {
		if r.IntN(4) == 0 && len(vm.logs) > 0 {
			l := vm.logs[r.IntN(len(vm.logs))]
			add := logText(r, vm.name, min(left, int64(4096+r.IntN(60<<10))))
			if err := appendFile(filepath.Join(root, filepath.FromSlash(l)), add); err != nil {
				return st, b.abort(mnt, err)
			}
			left -= int64(len(add))
			st.BytesEdited += int64(len(add))
			st.FilesEdited++
			continue
		}
		of := vm.windows[r.IntN(len(vm.windows))]
		n := min(of.size, int64(4096*(1+r.IntN(16))), left)
		off := int64(0)
		if of.size > n {
			off = r.Int64N(of.size - n + 1)
		}
		if err := overwrite(filepath.Join(root, filepath.FromSlash(of.rel)), off, n, cr); err != nil {
			return st, b.abort(mnt, err)
		}
		left -= n
		st.BytesEdited += n
		st.FilesEdited++
	}
	// Deletions: OS files worth a tenth of the budget.
	for left := budget / 10; left > 0 && len(vm.windows) > 1; {
		i := r.IntN(len(vm.windows))
		of := vm.windows[i]
		if err := os.Remove(filepath.Join(root, filepath.FromSlash(of.rel))); err != nil {
			return st, b.abort(mnt, fmt.Errorf("bench: fleet: churn: %w", err))
		}
		vm.windows = slices.Delete(vm.windows, i, i+1)
		left -= of.size
		st.BytesDeleted += of.size
		st.FilesDeleted++
	}
	// New files: the rest but a tenth (ext4), half random, half text.
	add := budget - st.BytesPagefile - st.BytesEdited - budget/10
	dir := path.Join("Users", vm.name, "Documents", fmt.Sprintf("gen%d", gen))
	for i := 0; add > 0; i++ {
		n := min(add, int64(256<<10+r.IntN(4<<20)))
		p := filepath.Join(root, filepath.FromSlash(dir), fmt.Sprintf("file-%04d", i))
		var err error
		if i%2 == 0 {
			err = writeRandom(p+".bin", n, cr)
		} else {
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.WriteFile(p+".txt", logText(r, vm.name, n), 0o644)
			}
		}
		if err != nil {
			return st, b.abort(mnt, fmt.Errorf("bench: fleet: churn: %w", err))
		}
		add -= n
		st.BytesAdded += n
		st.FilesAdded++
	}
	if err := mnt.unmount(); err != nil {
		return st, err
	}

	// ext4: drop a shared file, add a random one (debugfs edits the image
	// in place; there is no ext4 mount here).
	n := max(budget/10, 4096)
	newf := filepath.Join(vm.work, "ext4-new.bin")
	if err := writeRandom(newf, n, cr); err != nil {
		return st, err
	}
	cmds := fmt.Sprintf("write %s /data/gen%d.bin\n", newf, gen)
	if len(vm.ext4Shared) > 0 {
		i := r.IntN(len(vm.ext4Shared))
		cmds += "rm " + vm.ext4Shared[i] + "\n"
		vm.ext4Shared = slices.Delete(vm.ext4Shared, i, i+1)
		st.FilesDeleted++
	}
	cf := filepath.Join(vm.work, "debugfs.cmd")
	if err := os.WriteFile(cf, []byte(cmds), 0o644); err != nil {
		return st, fmt.Errorf("bench: fleet: %w", err)
	}
	if _, err := run(ctx, "", "debugfs", "-w", "-f", cf, filepath.Join(vm.work, "ext4.img")); err != nil {
		return st, err
	}
	st.BytesAdded += n
	st.FilesAdded++
	os.Remove(newf)
	return st, nil
}

func overwrite(p string, off, n int64, r *rand.ChaCha8) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("bench: fleet: churn: %w", err)
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		r.Read(buf[:k])
		if _, err := f.WriteAt(buf[:k], off); err != nil {
			f.Close()
			return fmt.Errorf("bench: fleet: churn %s: %w", p, err)
		}
		off += k
		n -= k
	}
	return f.Close()
}

func appendFile(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("bench: fleet: churn: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("bench: fleet: churn: %w", err)
	}
	return f.Close()
}

// convert writes generation gen's VHDX from the GPT head, the two
// partition images and the GPT tail, and measures it.
func (b *fleetBuilder) convert(ctx context.Context, vm *vmState, gen int) (FleetImage, error) {
	rel := filepath.Join(vm.name, fmt.Sprintf("gen%d", gen), vm.name+".vhdx")
	out := filepath.Join(b.dir, rel)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return FleetImage{}, fmt.Errorf("bench: fleet: %w", err)
	}
	w := vm.work
	if _, err := run(ctx, "", "qemu-img", "convert", "-f", "raw", "-O", "vhdx",
		"-o", fmt.Sprintf("subformat=dynamic,block_size=%d", vhdxBlock),
		filepath.Join(w, "head.raw"), filepath.Join(w, "ntfs.img"), filepath.Join(w, "ext4.img"), filepath.Join(w, "tail.raw"), out); err != nil {
		return FleetImage{}, err
	}
	img := FleetImage{Gen: gen, Path: rel}
	d, err := vhdxfs.Open(out)
	if err != nil {
		return img, fmt.Errorf("bench: fleet: %w", err)
	}
	img.VirtualBytes = d.Size()
	img.AllocatedBytes = vdisk.AllocatedBytes(vdisk.NormalizeExtents(d.Allocated(), d.Size()))
	d.Close()
	if img.VirtualBytes != b.o.Size {
		return img, fmt.Errorf("bench: fleet: %s is %d bytes, want %d", out, img.VirtualBytes, b.o.Size)
	}
	fi, err := os.Stat(out)
	if err != nil {
		return img, fmt.Errorf("bench: fleet: %w", err)
	}
	img.FileBytes = fi.Size()
	return img, nil
}

// fuseProc is a FUSE file system served by a child process in the
// foreground (ntfs-3g -o no_detach, vmvault mount, restic mount), so that
// its exit after the unmount proves everything was flushed, and its
// resource usage can be read.
type fuseProc struct {
	dir    string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stderr *bytes.Buffer
}

func (b *fleetBuilder) mountNTFS(ctx context.Context, vm *vmState, img string) (*fuseProc, error) {
	dir := filepath.Join(vm.work, "mnt")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: fleet: %w", err)
	}
	m, err := startFUSE(ctx, dir, "", nil, 30*time.Second, func() bool { return isMountpoint(dir) },
		"ntfs-3g", "-o", "no_detach,big_writes", img, dir)
	if err != nil {
		return nil, err
	}
	b.mounts = append(b.mounts, m)
	return m, nil
}

func (b *fleetBuilder) abort(m *fuseProc, err error) error {
	m.unmount()
	return err
}

func (b *fleetBuilder) unmountAll() {
	for _, m := range b.mounts {
		m.unmount()
	}
}

// startFUSE starts a FUSE server child and waits until ready() or the
// child exits or timeout.
func startFUSE(ctx context.Context, dir, wd string, env []string, timeout time.Duration, ready func() bool, name string, args ...string) (*fuseProc, error) {
	m := &fuseProc{dir: dir, done: make(chan struct{}), stderr: &bytes.Buffer{}}
	m.cmd = exec.Command(name, args...)
	m.cmd.Dir = wd
	m.cmd.Env = env
	m.cmd.Stdout = io.Discard
	m.cmd.Stderr = &limitedBuffer{b: m.stderr, n: 64 << 10}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", name, err)
	}
	go func() { m.err = m.cmd.Wait(); close(m.done) }()
	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-m.done:
			return nil, fmt.Errorf("bench: %s exited before %s was ready: %v: %s", name, dir, m.err, lastLine(m.stderr.String()))
		case <-ctx.Done():
			m.unmount()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.unmount()
			return nil, fmt.Errorf("bench: %s: %s not ready after %s: %s", name, dir, timeout, lastLine(m.stderr.String()))
		}
	}
	return m, nil
}

// unmount unmounts and waits for the server to exit (its SIGINT handler
// or the unmount ends it); a server that does not exit is killed.
func (m *fuseProc) unmount() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	if isMountpoint(m.dir) {
		if err := exec.Command("umount", m.dir).Run(); err != nil {
			// Busy: ask the server itself (vmvault and restic unmount on
			// SIGINT), then detach lazily as a last resort.
			m.cmd.Process.Signal(os.Interrupt)
			select {
			case <-m.done:
				return nil
			case <-time.After(10 * time.Second):
			}
			exec.Command("umount", "-l", m.dir).Run()
		}
	}
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
		return fmt.Errorf("bench: %s: FUSE server did not exit after unmount", m.dir)
	}
	return nil
}

type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// run runs a tool and returns its stdout; the error carries the last line
// of its stderr.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &limitedBuffer{b: &errb, n: 64 << 10}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("bench: %s: %w: %s", name, err, lastLine(errb.String()))
	}
	return out.Bytes(), nil
}

func fmtMB(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
