// Package testdisks gives tests the shared guest-disk fixtures built by
// testdata/mkdisks.sh with real tools (qemu-img, sgdisk, sfdisk, mkntfs,
// ntfs-3g, mkfs.ext4, mkfs.vfat/mtools) plus internal/testdisks/cmd/vhdxgen
// for what no tool can make (a VHDX with a dirty log, differencing children).
//
// Dir builds the fixtures once per content hash of the script and generator
// into testdata/out/<hash>/ (git-ignored) and returns that directory. Parallel
// `go test` processes serialize on a flock, so the build runs once. Set
// VMVAULT_TESTDISKS=/some/dir to use a prebuilt directory instead.
//
// The files are read-only fixtures: never write to them (qemu-img check -r,
// or opening a VHDX read-write, modifies the file). Copy first.
package testdisks

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
)

// File names inside Dir.
const (
	GPTVHDX          = "gpt.vhdx"           // dynamic VHDX, 1 MiB blocks, 200 MiB GPT disk
	GPTRaw           = "gpt.raw"            // qemu-img convert of GPTVHDX to raw (the oracle)
	MBRVHDX          = "mbr-fixed.vhdx"     // fixed VHDX (block_state_zero=off), 128 MiB MBR disk
	MBRRaw           = "mbr.raw"            // qemu-img convert of MBRVHDX to raw
	NoPartRaw        = "nopart.raw"         // sparse raw image, whole-disk ext4, no partition table
	DirtyVHDX        = "dirty.vhdx"         // 16 MiB VHDX whose log MUST be replayed (on-disk BAT all ZERO)
	DirtyExpectedRaw = "dirty.expected.raw" // its bytes after replay (qemu-img check -r all on a copy)
	BaseVHDX         = "base.vhdx"          // parent of the chain: qemu-made dynamic VHDX, 1 MiB blocks, 9.5 MiB
	BaseRaw          = "base.raw"           // qemu-img convert of BaseVHDX to raw
	ChildAVHDX       = "child.avhdx"        // differencing child of BaseVHDX (relative_path .\base.vhdx)
	ChildExpectedRaw = "child.expected.raw" // chain bytes per MS-VHDX (libvhdi output, ZERO blocks patched)
	OrphanAVHDX      = "orphan.avhdx"       // child whose parent (.\missing-parent.vhdx) does not exist
	BadLinkAVHDX     = "badlink.avhdx"      // child whose parent exists but whose parent_linkage mismatches
	ManifestTSV      = "manifest.tsv"       // every guest file, see Entry
)

// Locator values written into the children (Windows form, backslashes).
const (
	ChildRelativePath   = `.\base.vhdx`
	ChildAbsolutePath   = `\\?\C:\VMs\vmvault\base.vhdx` // deliberately unresolvable on Linux
	OrphanRelativePath  = `.\missing-parent.vhdx`
	BadLinkParentLinkID = "0badf00d-0000-4000-8000-000000000001"
)

// ChildBlockStates is the BAT payload state of each 1 MiB block of
// ChildAVHDX (10 blocks; block 9 is half past the 9.5 MiB virtual size).
// 6 = FULLY_PRESENT, 7 = PARTIALLY_PRESENT (one sector bitmap block), 0 =
// NOT_PRESENT (read the parent), 2 = ZERO (zeros, parent NOT consulted).
// Child payload blocks are stored in reverse block order in the file. Where
// the child has data, it differs from the base in every sector.
var ChildBlockStates = []uint8{6, 7, 0, 2, 7, 6, 0, 2, 6, 6}

// The NTFS alternate data stream on gpt.vhdx partition 2. The manifest lists
// only the main streams of ads.txt and its hard link hardlink-to-ads.txt.
const (
	ADSFile    = "ads.txt"
	ADSStream  = "secret"
	ADSContent = "hidden stream content\n"
)

// Image describes one disk image in Dir.
type Image struct {
	Name        string
	Raw         string // the raw oracle holding the same guest bytes
	Format      string // "vhdx" or "raw"
	VirtualSize int64
	BlockSize   uint32 // VHDX payload block size; 0 for raw
	Fixed       bool
}

// Images lists the partitioned and whole-disk images with guest files.
var Images = []Image{
	{GPTVHDX, GPTRaw, "vhdx", 200 << 20, 1 << 20, false},
	{MBRVHDX, MBRRaw, "vhdx", 128 << 20, 8 << 20, true},
	{NoPartRaw, NoPartRaw, "raw", 64 << 20, 0, false},
	{DirtyVHDX, DirtyExpectedRaw, "vhdx", 16 << 20, 1 << 20, false},
	{BaseVHDX, BaseRaw, "vhdx", 19 << 19, 1 << 20, false},
	{ChildAVHDX, ChildExpectedRaw, "vhdx", 19 << 19, 1 << 20, false},
}

// Partition is one partition (or whole-disk filesystem) of an image.
// Sectors are 512 bytes.
type Partition struct {
	Image   string
	Num     int    // Linux numbering: GPT entry index (1-based); MBR 1-4 primary, 5+ logical; 0 whole disk
	Start   int64  // first sector
	Sectors int64  // length in sectors
	FS      string // "fat32", "ntfs", "ext4", or "" (the extended container)
	Label   string // volume label
	Type    string // GPT type GUID (upper case) or MBR type byte as "0x07"
}

// Filesystem names used in Partition.FS.
const (
	FSFAT32 = "fat32"
	FSNTFS  = "ntfs"
	FSExt4  = "ext4"
)

// Partitions lists every partition of Images. Keep in sync with mkdisks.sh
// (the script and TestPartitionTables check it).
var Partitions = []Partition{
	{GPTVHDX, 1, 2048, 81920, FSFAT32, "ESPVOL", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"},
	{GPTVHDX, 2, 83968, 163840, FSNTFS, "NTFSVOL", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"},
	{GPTVHDX, 3, 247808, 131072, FSExt4, "LINUXVOL", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}, // 4 KiB blocks
	{MBRVHDX, 1, 2048, 81920, FSNTFS, "MBRNTFS", "0x07"},
	{MBRVHDX, 2, 83968, 81920, FSFAT32, "MBRFAT", "0x0c"}, // bootable
	{MBRVHDX, 3, 165888, 96256, "", "", "0x0f"},           // extended (LBA)
	{MBRVHDX, 5, 167936, 94208, FSExt4, "LOGICAL", "0x83"},
	{NoPartRaw, 0, 0, 131072, FSExt4, "NOPART", ""}, // 1 KiB blocks
}

// Entry is one line of manifest.tsv: a guest object we put on a volume.
// Kind is 'f' (file), 'd' (directory) or 'l' (symlink). Path is
// slash-separated, relative to the volume root, without a leading slash.
// Size is the file size, 0 for directories, the target length for symlinks.
// SHA256 (hex) is set for files, Target for symlinks.
type Entry struct {
	Image  string
	Part   int
	Kind   byte
	Path   string
	Size   int64
	SHA256 string
	Target string
}

// FSMetadata reports whether a path the filesystem itself created (so it is
// absent from the manifest): NTFS $-metafiles, ext4 lost+found, and the
// pseudo entries sleuthkit shows ($MBR, $FAT1, $OrphanFiles, ...).
func FSMetadata(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return strings.HasPrefix(first, "$") || first == "lost+found"
}

// Tools lists the programs mkdisks.sh runs.
var Tools = []string{
	"bash", "go", "qemu-img", "sgdisk", "sfdisk", "mkntfs", "ntfscp", "ntfs-3g",
	"mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "vhdiinfo", "fls", "cmp", "sha256sum",
	"tar", "truncate", "dd", "mountpoint", "/usr/bin/python3",
}

var (
	mu       sync.Mutex
	builtDir string
	buildErr error
)

// Dir returns the fixture directory, building it if needed. Missing tools
// skip the test locally and fail it under VMVAULT_REQUIRE_TOOLS=1.
func Dir(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if builtDir != "" {
		return builtDir
	}
	if buildErr != nil {
		t.Fatalf("testdisks: %v", buildErr)
	}
	if d := os.Getenv("VMVAULT_TESTDISKS"); d != "" {
		if _, err := os.Stat(filepath.Join(d, ".complete")); err != nil {
			t.Fatalf("testdisks: VMVAULT_TESTDISKS=%s is not a complete fixture dir: %v", d, err)
		}
		builtDir = d
		return d
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("testdisks: %v", err)
	}
	key, err := cacheKey(root)
	if err != nil {
		t.Fatalf("testdisks: %v", err)
	}
	base := filepath.Join(root, "testdata", "out")
	out := filepath.Join(base, key)
	if complete(out) {
		builtDir = out
		return out
	}
	needBuildTools(t)
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatalf("testdisks: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("testdisks: %v", err)
	}
	defer lock.Close() // releases the flock
	if err := lockFile(lock); err != nil {
		t.Fatalf("testdisks: flock: %v", err)
	}
	if !complete(out) { // another process may have built it while we waited
		// Leftovers of a killed build (the script's trap removes them
		// otherwise); safe to delete: we hold the lock.
		// A SIGKILLed build can leave its ntfs-3g mount alive (the FUSE
		// daemon is a separate process): unmount before deleting.
		olds, _ := filepath.Glob(filepath.Join(base, "*.tmp.*"))
		for _, o := range olds {
			exec.Command("umount", filepath.Join(o, "mnt")).Run()
			os.RemoveAll(o)
		}
		cmd := exec.Command("bash", filepath.Join(root, "testdata", "mkdisks.sh"), out)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("testdata/mkdisks.sh %s: %v\n%s", out, err, b)
			t.Fatalf("testdisks: %v", buildErr)
		}
	}
	builtDir = out
	return out
}

// Path returns filepath.Join(Dir(t), name).
func Path(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(Dir(t), name)
}

func needBuildTools(t testing.TB) {
	t.Helper()
	testenv.NeedTools(t, Tools...)
	if err := exec.Command("/usr/bin/python3", "-c", "import pyvhdi").Run(); err != nil {
		testenv.Skip(t, "needs python3-libvhdi (import pyvhdi) to build the test disks")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		testenv.Skip(t, "building the test disks needs root and /dev/fuse (ntfs-3g mount of an image file)")
	}
}

func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, ".complete"))
	return err == nil
}

func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "testdata", "mkdisks.sh")); err == nil {
				return d, nil
			}
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("no go.mod with testdata/mkdisks.sh above the working directory")
		}
		d = p
	}
}

// cacheKey hashes everything that determines the fixtures: the script and the
// generator's sources (vhdxgen imports nothing else of ours on purpose).
func cacheKey(root string) (string, error) {
	h := sha256.New()
	files := []string{"testdata/mkdisks.sh"}
	gen := filepath.Join(root, "internal", "testdisks", "cmd")
	err := filepath.WalkDir(gen, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			rel, _ := filepath.Rel(root, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files[1:])
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Manifest returns the parsed manifest.tsv of Dir(t).
func Manifest(t testing.TB) []Entry {
	t.Helper()
	f, err := os.Open(Path(t, ManifestTSV))
	if err != nil {
		t.Fatalf("testdisks: %v", err)
	}
	defer f.Close()
	es, err := ParseManifest(f)
	if err != nil {
		t.Fatalf("testdisks: %v", err)
	}
	return es
}

// ManifestFor returns the entries of one volume (image and partition number).
func ManifestFor(t testing.TB, image string, part int) []Entry {
	t.Helper()
	var out []Entry
	for _, e := range Manifest(t) {
		if e.Image == image && e.Part == part {
			out = append(out, e)
		}
	}
	return out
}

// ParseManifest reads manifest.tsv: a header line, then tab-separated
// image, part, kind, path, size, sha256, target.
func ParseManifest(r io.Reader) ([]Entry, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var out []Entry
	line := 0
	for sc.Scan() {
		line++
		if line == 1 {
			if !strings.HasPrefix(sc.Text(), "image\tpart\tkind\tpath") {
				return nil, fmt.Errorf("manifest: bad header %q", sc.Text())
			}
			continue
		}
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 7 {
			return nil, fmt.Errorf("manifest line %d: %d fields, want 7", line, len(f))
		}
		part, err1 := strconv.Atoi(f[1])
		size, err2 := strconv.ParseInt(f[4], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("manifest line %d: %w", line, err)
		}
		if len(f[2]) != 1 || !strings.Contains("fdl", f[2]) || f[3] == "" {
			return nil, fmt.Errorf("manifest line %d: bad kind %q or empty path", line, f[2])
		}
		out = append(out, Entry{Image: f[0], Part: part, Kind: f[2][0], Path: f[3], Size: size, SHA256: f[5], Target: f[6]})
	}
	return out, sc.Err()
}
