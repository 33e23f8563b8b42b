package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// flipped overlays byte XORs on a reader: a bit-flipped image without
// copying it.
type flipped struct {
	r     io.ReaderAt
	flips map[int64]byte
}

func (f *flipped) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.r.ReadAt(p, off)
	for o, x := range f.flips {
		if o >= off && o < off+int64(n) {
			p[o-off] ^= x
		}
	}
	return n, err
}

// exercise opens r and touches everything within a budget: the same
// sequence the fuzz target runs. It reports panics as errors with a stack,
// so one bad trial names itself instead of killing the test binary.
func exercise(r io.ReaderAt, size int64, maxEntries int, maxRead int64) (err error) {
	_, err = exerciseN(r, size, maxEntries, maxRead)
	return err
}

// exerciseN is exercise that also counts the entries it walked (-1: Open failed).
func exerciseN(r io.ReaderAt, size int64, maxEntries int, maxRead int64) (n int, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("PANIC: %v\n%s", p, debug.Stack())
		}
	}()
	g, err := Open(r, size)
	if err != nil {
		return -1, nil
	}
	defer g.Close()
	_ = g.Type() + g.Label()
	buf := make([]byte, 64<<10)
	fs.WalkDir(IOFS(g), ".", func(p string, d fs.DirEntry, err error) error {
		n++
		if n > maxEntries {
			return fs.SkipAll
		}
		if err != nil {
			return nil
		}
		fi, err := g.Stat(p)
		if err != nil {
			return nil
		}
		if !validName(fi.Name) && p != "." {
			panic(fmt.Sprintf("unsafe name %q handed out", fi.Name))
		}
		if fi.Mode&fs.ModeSymlink != 0 {
			if tg, err := g.Readlink(p); err == nil && len(tg) > MaxSymlinkTarget {
				panic("symlink target over the cap")
			}
		}
		if fi.Mode.IsRegular() {
			f, err := g.Open(p)
			if err != nil {
				return nil
			}
			for off := int64(0); off < min(f.Size(), maxRead); off += int64(len(buf)) {
				if _, err := f.ReadAt(buf, off); err != nil {
					break
				}
			}
			f.ReadAt(buf[:1], f.Size()-1)
			f.ReadAt(buf, f.Size()/2)
			f.Close()
		}
		return nil
	})
	return n, nil
}

// runWithTimeout fails the test if fn hangs.
func runWithTimeout(t *testing.T, what string, d time.Duration, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: no result after %v (hang?)", what, d)
	}
}

// smallImages builds one small image per filesystem.
func smallImages(t *testing.T) map[string]string {
	src := t.TempDir()
	makeTree(t, src, treeOpts{small: true})
	srcLinks := t.TempDir()
	makeTree(t, srcLinks, treeOpts{small: true, symlinks: true, hardlinks: true})
	return map[string]string{
		"ext4":  buildExt4(t, srcLinks),
		"ntfs":  buildNTFS(t, src, 8, ""),
		"fat12": buildFAT(t, src, 12),
		"fat16": buildFAT(t, src, 16),
		"fat32": buildFAT(t, src, 32),
	}
}

// TestCorruptImages feeds truncated and bit-flipped images to Open and a
// full walk: errors and partial listings are fine, panics and hangs are not.
func TestCorruptImages(t *testing.T) {
	imgs := smallImages(t)
	trials := 40
	if testing.Short() {
		trials = 8
	}
	for kind, img := range imgs {
		t.Run(kind, func(t *testing.T) {
			data, err := os.ReadFile(img)
			must(t, err)
			base := bytes.NewReader(data)
			size := int64(len(data))
			if err := exercise(base, size, 1<<20, 1<<30); err != nil {
				t.Fatalf("pristine image: %v", err)
			}
			for _, n := range []int64{0, 100, 512, 1024, 2048, 4096, 16 << 10, 64 << 10, 1 << 20, size / 2, size - 4096} {
				runWithTimeout(t, fmt.Sprintf("truncated to %d", n), 30*time.Second, func() error {
					return exercise(io.NewSectionReader(base, 0, n), n, 1<<20, 1<<30)
				})
			}
			// Flip bytes in the metadata that matters: the first few MiB
			// (boot sector, FATs, ext4 group descriptors and inode
			// tables) and, for NTFS, the $MFT.
			hot := []int64{0}
			if kind == "ntfs" {
				bps := int64(binary.LittleEndian.Uint16(data[11:]))
				hot = append(hot, int64(binary.LittleEndian.Uint64(data[0x30:]))*bps*int64(data[13]))
			}
			rnd := rand.New(rand.NewPCG(42, uint64(len(kind))))
			opened, entries := 0, 0
			for i := 0; i < trials; i++ {
				start := hot[i%len(hot)]
				span := min(int64(4<<20), size-start)
				if i%3 == 0 {
					span = min(64<<10, span) // dense damage in the hottest area
				}
				fl := map[int64]byte{}
				for k := 0; k < 1+rnd.IntN(300); k++ {
					fl[start+rnd.Int64N(span)] = byte(1 + rnd.IntN(255))
				}
				r := &flipped{r: base, flips: fl}
				runWithTimeout(t, fmt.Sprintf("flip trial %d (%d flips)", i, len(fl)), 30*time.Second, func() error {
					n, err := exerciseN(r, size, 1<<20, 1<<30)
					if n >= 0 {
						opened++
						entries += n
					}
					return err
				})
			}
			t.Logf("%d flip trials: %d opened, %d entries walked in total", trials, opened, entries)
		})
	}
}

// Hand-made hostile structures the random flips are unlikely to hit.
func TestHostileFAT(t *testing.T) {
	img := buildFAT(t, func() string {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, "a.txt"), bytes.Repeat([]byte("x"), 40000), 0o644)
		os.Mkdir(filepath.Join(d, "sub"), 0o755)
		return d
	}(), 16)
	data, err := os.ReadFile(img)
	must(t, err)
	g0, err := Open(bytes.NewReader(data), int64(len(data)))
	must(t, err)
	fi, err := g0.Stat("a.txt")
	must(t, err)
	sub, err := g0.Stat("sub")
	must(t, err)
	reserved := int64(binary.LittleEndian.Uint16(data[14:])) * 512
	setFAT := func(d []byte, c uint64, v uint16) {
		binary.LittleEndian.PutUint16(d[reserved+int64(c)*2:], v)
	}
	t.Run("chain loop", func(t *testing.T) {
		d := bytes.Clone(data)
		setFAT(d, fi.Ino+1, uint16(fi.Ino)) // second cluster points back to the first
		g, err := Open(bytes.NewReader(d), int64(len(d)))
		must(t, err)
		runWithTimeout(t, "read looping file", 10*time.Second, func() error {
			f, err := g.Open("a.txt")
			if err != nil {
				return err // the readable head stays readable: Open works
			}
			_, err = io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
			if err == nil {
				return fmt.Errorf("looping chain read without error")
			}
			if !strings.Contains(err.Error(), "loop") {
				return fmt.Errorf("error %v does not say loop", err)
			}
			return nil
		})
	})
	t.Run("directory loop", func(t *testing.T) {
		d := bytes.Clone(data)
		setFAT(d, sub.Ino, uint16(sub.Ino)) // sub's cluster points to itself
		g, err := Open(bytes.NewReader(d), int64(len(d)))
		must(t, err)
		runWithTimeout(t, "list looping dir", 10*time.Second, func() error {
			_, err := g.ReadDir("sub")
			return err // partial listing, no error: the readable cluster
		})
	})
	t.Run("directory cycle", func(t *testing.T) {
		d := bytes.Clone(data)
		// Give "sub" an entry for itself (a copy of its own dirent) and
		// one for the root (cluster 0): a naive walk would never end.
		rootOff := reserved + 2*int64(binary.LittleEndian.Uint16(data[22:]))*512
		var subEnt []byte
		for i := int64(0); i < 16; i++ {
			e := d[rootOff+i*32 : rootOff+i*32+32]
			if string(e[0:8]) == "SUB     " {
				subEnt = bytes.Clone(e)
			}
		}
		spc := int64(d[13])
		rootSecs := (int64(binary.LittleEndian.Uint16(d[17:]))*32 + 511) / 512
		dataOff := rootOff + rootSecs*512
		subOff := dataOff + (int64(sub.Ino)-2)*spc*512
		self := bytes.Clone(subEnt)
		copy(self[0:11], "SELF       ")
		up := bytes.Clone(subEnt)
		copy(up[0:11], "UP         ")
		binary.LittleEndian.PutUint16(up[26:], 0)
		copy(d[subOff+64:], self) // after "." and ".."
		copy(d[subOff+96:], up)
		g, err := Open(bytes.NewReader(d), int64(len(d)))
		must(t, err)
		runWithTimeout(t, "walk cyclic tree", 20*time.Second, func() error {
			n := 0
			fs.WalkDir(IOFS(g), ".", func(p string, de fs.DirEntry, err error) error {
				n++
				return nil
			})
			if n > 100 {
				return fmt.Errorf("walk visited %d entries", n)
			}
			if _, err := g.ReadDir("sub/self"); !errors.Is(err, ErrCorrupt) {
				return fmt.Errorf("ReadDir(sub/self) = %v, want ErrCorrupt", err)
			}
			return nil
		})
	})
	t.Run("hostile names", func(t *testing.T) {
		d := bytes.Clone(data)
		// Rename the root's short entries for a.txt to "..", "." and "a/b"
		// style garbage; they must be skipped, not handed out.
		rootOff := reserved + 2*int64(binary.LittleEndian.Uint16(data[22:]))*512
		for i := int64(0); i < 16; i++ {
			e := d[rootOff+i*32 : rootOff+i*32+32]
			if e[11] == 0x0F { // turn LFN entries into deleted ones
				e[0] = 0xE5
			}
			if string(e[0:8]) == "A       " {
				copy(e[0:11], "..         ")
			}
			if string(e[0:8]) == "SUB     " {
				copy(e[0:11], "A/B\x00       ")
			}
		}
		g, err := Open(bytes.NewReader(d), int64(len(d)))
		must(t, err)
		list, err := g.ReadDir(".")
		must(t, err)
		for _, fi := range list {
			if !validName(fi.Name) {
				t.Errorf("unsafe name %q listed", fi.Name)
			}
		}
	})
}

// --- fuzzing ---

// Fuzz inputs are either a raw image (zero-padded to 64 KiB) or, with the
// "VMVZ" magic, a sparse image: u32 total size, then records of u32 offset,
// u16 length, bytes. The sparse form keeps committed seeds small (real
// images are mostly zeros) and lets the fuzzer place bytes anywhere.
func decodeFuzz(data []byte) []byte {
	if !bytes.HasPrefix(data, []byte("VMVZ")) || len(data) < 8 {
		if len(data) < 64<<10 {
			data = append(data, make([]byte, 64<<10-len(data))...)
		}
		return data
	}
	size := min(int(binary.LittleEndian.Uint32(data[4:])), 4<<20)
	img := make([]byte, size)
	p := data[8:]
	for len(p) >= 6 {
		off := int(binary.LittleEndian.Uint32(p))
		n := int(binary.LittleEndian.Uint16(p[4:]))
		p = p[6:]
		n = min(n, len(p))
		if off >= 0 && off < size {
			copy(img[off:], p[:n])
		}
		p = p[n:]
	}
	return img
}

func encodeFuzz(img []byte, limit int) []byte {
	out := []byte("VMVZ")
	out = binary.LittleEndian.AppendUint32(out, uint32(len(img)))
	// Records cover runs of non-zero 32-byte blocks.
	const blk = 32
	img = img[:min(len(img), limit)]
	for off := 0; off < len(img); {
		if bytes.Count(img[off:min(off+blk, len(img))], []byte{0}) == min(blk, len(img)-off) {
			off += blk
			continue
		}
		end := off
		for end < len(img) && end-off < 60000 && bytes.Count(img[end:min(end+blk, len(img))], []byte{0}) != min(blk, len(img)-end) {
			end += blk
		}
		end = min(end, len(img))
		out = binary.LittleEndian.AppendUint32(out, uint32(off))
		out = binary.LittleEndian.AppendUint16(out, uint16(end-off))
		out = append(out, img[off:end]...)
		off = end
	}
	return out
}

// fuzzSlow is how long one fuzz input may take (a small budget walk of an
// image of at most 4 MiB normally takes well under 10 ms).
const fuzzSlow = 3 * time.Second

func FuzzOpen(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\xeb\x3c\x90NTFS    "))
	f.Fuzz(func(t *testing.T, data []byte) {
		img := decodeFuzz(data)
		done := make(chan error, 1)
		go func() { done <- exercise(bytes.NewReader(img), int64(len(img)), 200, 256<<10) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(fuzzSlow):
			// A slow input is a bug too (a mount would hang on it);
			// fail with every stack so the loop shows.
			buf := make([]byte, 1<<20)
			t.Fatalf("input took over %v:\n%s", fuzzSlow, buf[:runtime.Stack(buf, true)])
		}
	})
}

// tracker records which bytes of an image were read.
type tracker struct {
	r    io.ReaderAt
	mu   sync.Mutex
	seen []bool
}

func (t *tracker) ReadAt(p []byte, off int64) (int, error) {
	n, err := t.r.ReadAt(p, off)
	t.mu.Lock()
	for i := 0; i < n; i++ {
		t.seen[off+int64(i)] = true
	}
	t.mu.Unlock()
	return n, err
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzOpen from tiny real
// images. Run with VMVAULT_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VMVAULT_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set VMVAULT_WRITE_FUZZ_SEEDS=1 to rewrite the committed seeds")
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello\n"), 0o644)
	os.Mkdir(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "a long file name.txt"), []byte("x"), 0o644)
	os.Symlink("hello.txt", filepath.Join(src, "link"))
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	must(t, os.MkdirAll(dir, 0o755))
	seed := func(name, img string, limit int) {
		b, err := os.ReadFile(img)
		must(t, err)
		b = b[:min(len(b), limit)]
		// Keep only the bytes a full walk reads: the rest (an NTFS
		// $LogFile full of 0xFF, $UpCase...) would only bloat the seed.
		tr := &tracker{r: bytes.NewReader(b), seen: make([]bool, len(b))}
		must(t, exercise(tr, int64(len(b)), 1000, 1<<20))
		for i := range b {
			if !tr.seen[i] {
				b[i] = 0
			}
		}
		enc := encodeFuzz(b, limit)
		must(t, os.WriteFile(filepath.Join(dir, name), []byte("go test fuzz v1\n[]byte("+strconv.Quote(string(enc))+")\n"), 0o644))
		g, err := Open(bytes.NewReader(decodeFuzz(enc)), int64(len(decodeFuzz(enc))))
		must(t, err)
		list, err := g.ReadDir(".")
		must(t, err)
		t.Logf("%s: %d bytes encoded, root lists %d entries", name, len(enc), len(list))
	}
	fat12 := buildFAT(t, src, 12)
	seed("fat12", fat12, 64<<10)
	ext := filepath.Join(t.TempDir(), "tiny.ext4")
	run(t, "mkfs.ext4", "-F", "-q", "-b", "1024", "-N", "16", "-O", "^has_journal,^resize_inode", "-d", src, ext, "256K")
	seed("ext4", ext, 256<<10)
	ntfsSrc := t.TempDir()
	os.WriteFile(filepath.Join(ntfsSrc, "hello.txt"), []byte("hello\n"), 0o644)
	os.Mkdir(filepath.Join(ntfsSrc, "d"), 0o755)
	nimg := filepath.Join(t.TempDir(), "tiny.ntfs")
	buildNTFS(t, ntfsSrc, 4, nimg) // go-ntfs rejects volumes under 4096 sectors
	seed("ntfs", nimg, 4<<20)      // whole volume: the root index and $Bitmap lie beyond the $MFT
	fat32src := t.TempDir()
	os.WriteFile(filepath.Join(fat32src, "x.txt"), []byte("x"), 0o644)
	seed("fat32", buildFAT(t, fat32src, 32), 2<<20) // root cluster follows 1 MiB of FATs
}
