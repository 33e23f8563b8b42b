package guest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf16"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/internal/testenv"
)

type checkOpts struct {
	extra     func(string) bool // paths we may list that the source lacks
	mtimeTol  time.Duration
	noMtime   bool
	dosNamed  string // a path that also carries a DOS 8.3 name
	hardlinks bool
}

// checkAgainstSource compares everything g shows with the source tree:
// paths, types, sizes, sha256, symlink targets, mtimes, sort order.
func checkAgainstSource(t *testing.T, g FS, src map[string]srcEntry, o checkOpts) map[string]FileInfo {
	t.Helper()
	got := map[string]FileInfo{}
	err := fs.WalkDir(IOFS(g), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		fi, err := g.Stat(p)
		if err != nil {
			t.Errorf("stat %s: %v", p, err)
			return nil
		}
		if d.IsDir() {
			list, err := g.ReadDir(p)
			if err != nil {
				t.Errorf("readdir %s: %v", p, err)
			}
			if !slices.IsSortedFunc(list, func(a, b FileInfo) int { return strings.Compare(a.Name, b.Name) }) {
				t.Errorf("readdir %s: not sorted by name", p)
			}
		}
		if p != "." {
			got[p] = fi
		}
		return nil
	})
	must(t, err)
	for p, s := range src {
		fi, ok := got[p]
		if !ok {
			t.Errorf("%s: missing", p)
			continue
		}
		if fi.IsDir() != s.dir {
			t.Errorf("%s: dir=%v, source dir=%v", p, fi.IsDir(), s.dir)
			continue
		}
		if s.target != "" {
			if fi.Mode&fs.ModeSymlink == 0 {
				t.Errorf("%s: mode %v, want symlink", p, fi.Mode)
				continue
			}
			tg, err := g.Readlink(p)
			if err != nil || tg != s.target {
				t.Errorf("%s: readlink = %q, %v; want %q", p, tg, err, s.target)
			}
			continue
		}
		if s.dir {
			continue
		}
		if fi.Size != s.size {
			t.Errorf("%s: size %d, want %d", p, fi.Size, s.size)
		}
		if !o.noMtime {
			if d := fi.ModTime.Sub(s.mtime); d > o.mtimeTol || d < -o.mtimeTol {
				t.Errorf("%s: mtime %v, want %v", p, fi.ModTime, s.mtime)
			}
		}
		if s.sha != "" {
			f, err := g.Open(p)
			if err != nil {
				t.Errorf("open %s: %v", p, err)
				continue
			}
			if f.Size() != s.size {
				t.Errorf("%s: File.Size %d, want %d", p, f.Size(), s.size)
			}
			if h := hashReader(io.NewSectionReader(f, 0, f.Size())); h != s.sha {
				t.Errorf("%s: sha256 %s, want %s", p, h, s.sha)
			}
			f.Close()
		}
	}
	for p := range got {
		if _, ok := src[p]; !ok && (o.extra == nil || !o.extra(p)) {
			t.Errorf("%s: listed but not in the source tree", p)
		}
	}
	if o.hardlinks {
		a, b, c := got["hard_a.txt"], got["sub/hard_b.txt"], got["hard_c.txt"]
		if a.Ino == 0 || a.Ino != b.Ino || a.Ino != c.Ino {
			t.Errorf("hard links: Ino %d %d %d, want one shared", a.Ino, b.Ino, c.Ino)
		}
		if a.Nlink != 3 || b.Nlink != 3 {
			t.Errorf("hard links: Nlink %d %d, want 3", a.Nlink, b.Nlink)
		}
		target := got["links/target.txt"]
		for p, fi := range got {
			if strings.HasPrefix(p, "links/") && (fi.Ino != target.Ino || fi.Nlink != manyLinks) {
				t.Errorf("%s: Ino %d Nlink %d, want %d and %d", p, fi.Ino, fi.Nlink, target.Ino, manyLinks)
			}
		}
	}
	return got
}

// checkFls compares our listing with sleuthkit's and our bytes with icat's.
// compareIno: ext4 inode / NTFS MFT numbers match sleuthkit's addresses.
func checkFls(t *testing.T, img string, got map[string]FileInfo, g FS, skip func(string) bool, compareIno bool) {
	t.Helper()
	fl := flsList(t, img, skip)
	for p, e := range fl {
		fi, ok := got[p]
		if !ok {
			t.Errorf("fls lists %s (%s %s), we do not", p, e.kind, e.meta)
			continue
		}
		if (e.kind == "d") != fi.IsDir() && fi.Mode&fs.ModeSymlink == 0 {
			t.Errorf("%s: fls kind %s, we dir=%v", p, e.kind, fi.IsDir())
		}
		if compareIno && strconv.FormatUint(fi.Ino, 10) != e.meta {
			t.Errorf("%s: Ino %d, fls address %s", p, fi.Ino, e.meta)
		}
	}
	for p := range got {
		if _, ok := fl[p]; !ok {
			t.Errorf("we list %s, fls does not", p)
		}
	}
	// icat a sample of regular files: everything outside "many/" plus a few
	// of those, so the test stays fast.
	n := 0
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for p := range fl {
			if !yield(p) {
				return
			}
		}
	}) {
		e := fl[p]
		fi := got[p]
		if e.kind != "r" || fi.Size > 64<<20 || fi.Mode&fs.ModeSymlink != 0 || (strings.HasPrefix(p, "many/") && n%50 != 0) {
			n++
			continue
		}
		n++
		want := run(t, "icat", img, e.meta)
		f, err := g.Open(p)
		if err != nil {
			t.Errorf("open %s: %v", p, err)
			continue
		}
		if h := hashReader(io.NewSectionReader(f, 0, f.Size())); h != sha([]byte(want)) {
			t.Errorf("%s: our bytes differ from icat %s", p, e.meta)
		}
		f.Close()
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func checkHuge(t *testing.T, g FS) {
	t.Helper()
	f, err := g.Open("huge.bin")
	must(t, err)
	defer f.Close()
	if f.Size() != hugeSize {
		t.Fatalf("huge.bin size %d, want %d", f.Size(), hugeSize)
	}
	b := make([]byte, 8)
	if _, err := f.ReadAt(b, hugeMarker-2); err != nil || string(b) != "\x00\x00HUGE\x00\x00" {
		t.Errorf("huge.bin at 2.5 GiB: %q, %v", b, err)
	}
	n, err := f.ReadAt(b, hugeSize-3)
	if n != 3 || err != io.EOF || !bytes.Equal(b[:3], []byte{0, 0, 0}) {
		t.Errorf("huge.bin tail read: n=%d err=%v", n, err)
	}
}

func checkParallelReads(t *testing.T, g FS, name string, want []byte) {
	t.Helper()
	f, err := g.Open(name)
	must(t, err)
	defer f.Close()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < 200; i++ {
				off := rnd.Int64N(int64(len(want)))
				n := rnd.IntN(200_000) + 1
				b := make([]byte, n)
				m, err := f.ReadAt(b, off)
				end := min(off+int64(n), int64(len(want)))
				if m != int(end-off) || !bytes.Equal(b[:m], want[off:end]) {
					t.Errorf("parallel ReadAt(%d, %d) = %d, %v: wrong bytes", n, off, m, err)
					return
				}
				if end < off+int64(n) && err != io.EOF {
					t.Errorf("ReadAt past end: err %v, want io.EOF", err)
				}
			}
		}(uint64(w))
	}
	wg.Wait()
}

func openImage(t *testing.T, img, wantType, wantLabel string) FS {
	t.Helper()
	r, size := imageFile(t, img)
	typ, err := Detect(r, size)
	if err != nil || typ != wantType {
		t.Fatalf("Detect = %q, %v; want %q", typ, err, wantType)
	}
	g, err := Open(r, size)
	must(t, err)
	t.Cleanup(func() { g.Close() })
	if g.Type() != wantType || g.Label() != wantLabel {
		t.Errorf("Type/Label = %q/%q, want %q/%q", g.Type(), g.Label(), wantType, wantLabel)
	}
	return g
}

func TestExt4(t *testing.T) {
	testenv.NeedTools(t, "debugfs", "fls", "icat")
	src := t.TempDir()
	makeTree(t, src, treeOpts{symlinks: true, hardlinks: true, huge: true})
	img := buildExt4(t, src)
	g := openImage(t, img, "ext4", "LINUXVOL")
	s := scanSource(t, src)
	got := checkAgainstSource(t, g, s, checkOpts{
		extra:     func(p string) bool { return p == "lost+found" },
		hardlinks: true,
	})
	// mkfs.ext4 -d copies owner and mode.
	if fi := got["hello.txt"]; fi.Mode != 0o644 || fi.Uid != uint32(os.Getuid()) {
		t.Errorf("hello.txt mode %v uid %d", fi.Mode, fi.Uid)
	}
	checkHuge(t, g)
	checkFls(t, img, got, g, func(p string) bool { return strings.HasPrefix(p, "$OrphanFiles") }, true)
	big, _ := os.ReadFile(filepath.Join(src, "big.bin"))
	checkParallelReads(t, g, "big.bin", big)
	if out := run(t, "debugfs", "-R", "htree many", img); !strings.Contains(out, "Root node dump") {
		t.Errorf("many/ is not an HTree directory; debugfs says:\n%.300s", out)
	}
	checkPathErrors(t, g)
}

// TestExt2 covers block-mapped files (no extents): 1 KiB blocks make
// big.bin use double-indirect blocks and sparse.bin indirect holes; 128-byte
// inodes have no nanosecond times.
func TestExt2(t *testing.T) {
	testenv.NeedTools(t, "mke2fs")
	for _, typ := range []string{"ext2", "ext3"} {
		t.Run(typ, func(t *testing.T) {
			src := t.TempDir()
			makeTree(t, src, treeOpts{symlinks: true, hardlinks: true})
			img := filepath.Join(t.TempDir(), typ+".img")
			run(t, "mke2fs", "-F", "-q", "-t", typ, "-b", "1024", "-I", "128", "-L", "OLDVOL", "-d", src, img, "32M")
			g := openImage(t, img, "ext4", "OLDVOL")
			got := checkAgainstSource(t, g, scanSource(t, src), checkOpts{
				extra:     func(p string) bool { return p == "lost+found" },
				hardlinks: true,
			})
			checkFls(t, img, got, g, func(p string) bool { return strings.HasPrefix(p, "$OrphanFiles") }, true)
			big, _ := os.ReadFile(filepath.Join(src, "big.bin"))
			checkParallelReads(t, g, "big.bin", big)
		})
	}
}

func TestNTFS(t *testing.T) {
	testenv.NeedTools(t, "istat", "fls", "icat")
	src := t.TempDir()
	// cp -a into ntfs-3g turns the symlinks into Interix symlinks.
	makeTree(t, src, treeOpts{hardlinks: true, huge: true, symlinks: true})
	img := filepath.Join(t.TempDir(), "ntfs.img")
	buildNTFS(t, src, 64, img)
	comp := tweakNTFS(t, img)
	g := openImage(t, img, "ntfs", "NTFSVOL")
	s := scanSource(t, src)
	s["dir with spaces/winlink"] = srcEntry{target: "../hello.txt"}
	s["junction"] = srcEntry{target: "C:/Users"}
	s["compressed"] = srcEntry{dir: true}
	for name, b := range comp {
		s["compressed/"+name] = srcEntry{size: int64(len(b)), sha: sha(b), mtime: s["hello.txt"].mtime}
	}
	got := checkAgainstSource(t, g, s, checkOpts{mtimeTol: time.Microsecond, hardlinks: true})
	checkHuge(t, g)
	// The DOS alias is not a second link.
	if fi := got["dir with spaces/Mixed Case Name.TXT"]; fi.Nlink != 1 {
		t.Errorf("file with a DOS alias: Nlink %d, want 1", fi.Nlink)
	}
	// sleuthkit lists metafiles ($MFT...), its virtual $OrphanFiles and
	// named streams ("file:stream"); we hide all three.
	checkFls(t, img, got, g, func(p string) bool {
		return strings.HasPrefix(p, "$") || strings.Contains(p, ":")
	}, true)
	big, _ := os.ReadFile(filepath.Join(src, "big.bin"))
	checkParallelReads(t, g, "big.bin", big)
	checkParallelReads(t, g, "compressed/text.txt", comp["text.txt"])
	checkPathErrors(t, g)
	// The oracle agrees the files are stored the way we meant to test.
	if out := run(t, "istat", img, strconv.FormatUint(got["sparse.bin"].Ino, 10)); !strings.Contains(out, "Sparse") {
		t.Errorf("sparse.bin is not sparse on NTFS:\n%.400s", out)
	}
	if out := run(t, "istat", img, strconv.FormatUint(got["links/target.txt"].Ino, 10)); !strings.Contains(out, "$ATTRIBUTE_LIST") {
		t.Errorf("links/target.txt has no $ATTRIBUTE_LIST:\n%.600s", out)
	}
	if out := run(t, "istat", img, strconv.FormatUint(got["compressed/text.txt"].Ino, 10)); !strings.Contains(out, "Compressed") {
		t.Errorf("compressed/text.txt is not compressed:\n%.400s", out)
	}
}

// tweakNTFS adds what cp cannot make, through ntfs-3g's extended attributes:
// a DOS 8.3 name next to a long name (the listing must show the file once,
// by its long name), a Windows symlink and a junction (reparse points).
// It also writes LZNT1-compressed files (directory with the compressed
// attribute, mounted with -o compression) and returns their contents.
func tweakNTFS(t *testing.T, img string) map[string][]byte {
	t.Helper()
	mnt := t.TempDir()
	run(t, "ntfs-3g", "-o", "compression", img, mnt)
	defer exec.Command("umount", mnt).Run()
	must(t, unix.Setxattr(filepath.Join(mnt, "dir with spaces/Mixed Case Name.TXT"), "system.ntfs_dos_name", []byte("MIXEDC~1.TXT"), 0))

	wl := filepath.Join(mnt, "dir with spaces", "winlink")
	must(t, os.WriteFile(wl, nil, 0o644))
	must(t, unix.Setxattr(wl, "system.ntfs_reparse_data", reparseBuffer(0xA000000C, `..\hello.txt`, `..\hello.txt`, 1), 0))
	jn := filepath.Join(mnt, "junction")
	must(t, os.Mkdir(jn, 0o755))
	must(t, unix.Setxattr(jn, "system.ntfs_reparse_data", reparseBuffer(0xA0000003, `\??\C:\Users`, `C:\Users`, 0), 0))

	cd := filepath.Join(mnt, "compressed")
	must(t, os.Mkdir(cd, 0o755))
	attr := make([]byte, 4)
	_, err := unix.Getxattr(cd, "system.ntfs_attrib", attr)
	must(t, err)
	binary.LittleEndian.PutUint32(attr, binary.LittleEndian.Uint32(attr)|0x800) // FILE_ATTRIBUTE_COMPRESSED
	must(t, unix.Setxattr(cd, "system.ntfs_attrib", attr, 0))
	var text bytes.Buffer
	for i := 0; text.Len() < 1<<20; i++ {
		fmt.Fprintf(&text, "line %d of a compressible file\n", i)
	}
	mixed := append(make([]byte, 200_000), text.Bytes()[:70_000]...) // zero units and data units
	rnd := rand.New(rand.NewPCG(7, 7))
	noise := make([]byte, 300_000)
	for i := range noise {
		noise[i] = byte(rnd.Uint32())
	}
	files := map[string][]byte{"text.txt": text.Bytes(), "mixed.bin": mixed, "noise.bin": noise}
	for name, b := range files {
		must(t, os.WriteFile(filepath.Join(cd, name), b, 0o644))
		setTime(t, filepath.Join(cd, name))
	}
	setTime(t, cd)
	must(t, exec.Command("umount", mnt).Run())
	return files
}

// reparseBuffer builds a REPARSE_DATA_BUFFER for a symlink (with flags) or
// a junction (without), names NUL-terminated as Windows writes them.
func reparseBuffer(tag uint32, sub, print string, flags uint32) []byte {
	enc := func(s string) []byte {
		var b []byte
		for _, u := range utf16.Encode([]rune(s)) {
			b = binary.LittleEndian.AppendUint16(b, u)
		}
		return b
	}
	sb, pb := enc(sub), enc(print)
	var body []byte
	body = binary.LittleEndian.AppendUint16(body, 0)
	body = binary.LittleEndian.AppendUint16(body, uint16(len(sb)))
	body = binary.LittleEndian.AppendUint16(body, uint16(len(sb)+2))
	body = binary.LittleEndian.AppendUint16(body, uint16(len(pb)))
	if tag == 0xA000000C {
		body = binary.LittleEndian.AppendUint32(body, flags)
	}
	body = append(body, sb...)
	body = append(body, 0, 0)
	body = append(body, pb...)
	body = append(body, 0, 0)
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, tag)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(body)))
	b = binary.LittleEndian.AppendUint16(b, 0)
	return append(b, body...)
}

func TestFAT(t *testing.T) {
	for _, bits := range []int{12, 16, 32} {
		t.Run("fat"+strconv.Itoa(bits), func(t *testing.T) {
			src := t.TempDir()
			makeTree(t, src, treeOpts{small: bits == 12})
			img := buildFAT(t, src, bits)
			typ := "fat" + strconv.Itoa(bits)
			g := openImage(t, img, typ, strings.ToUpper(typ)+"VOL")
			s := scanSource(t, src)
			// FAT keeps 2-second local wall-clock times; with TZ=UTC
			// for mcopy they equal the source times exactly.
			got := checkAgainstSource(t, g, s, checkOpts{mtimeTol: time.Second})
			checkFls(t, img, got, g, func(p string) bool {
				return strings.HasPrefix(p, "$") || strings.Contains(p, "(Volume Label Entry)")
			}, false)
			name, want := "mid.bin", "mid.bin"
			if bits != 12 {
				name, want = "big.bin", "big.bin"
			}
			b, _ := os.ReadFile(filepath.Join(src, want))
			checkParallelReads(t, g, name, b)
			checkPathErrors(t, g)
			if bits == 32 {
				// A stale ext4 magic in FAT32's reserved sectors (mkfs.fat
				// over an old ext4 volume) must not win.
				data, err := os.ReadFile(img)
				must(t, err)
				data[1024+0x38], data[1024+0x39] = 0x53, 0xEF
				if typ, err := Detect(bytes.NewReader(data), int64(len(data))); typ != "fat32" {
					t.Errorf("Detect with stale ext4 magic = %q, %v", typ, err)
				}
			}
			// 8.3-only name: SHORT.TXT has no LFN entry.
			if _, err := g.Stat("SHORT.TXT"); err != nil {
				t.Errorf("8.3 name: %v", err)
			}
		})
	}
}

func checkPathErrors(t *testing.T, g FS) {
	t.Helper()
	for _, p := range []string{"/hello.txt", "a//b", "../x", "hello.txt/", ""} {
		if _, err := g.Stat(p); !errors.Is(err, fs.ErrInvalid) {
			t.Errorf("Stat(%q) = %v, want fs.ErrInvalid", p, err)
		}
	}
	for _, p := range []string{"nope", "hello.txt/x", "many/nope"} {
		_, err := g.Stat(p)
		var pe *fs.PathError
		if !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &pe) {
			t.Errorf("Stat(%q) = %v, want *fs.PathError with fs.ErrNotExist", p, err)
		}
	}
	// NTFS and FAT find names in any case, as Windows does; ext4 does not.
	fi, err := g.Stat("DIR WITH SPACES/mixed case name.txt")
	if g.Type() == "ext4" {
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ext4 case-insensitive Stat = %v, want fs.ErrNotExist", err)
		}
	} else if err != nil || fi.Name != "Mixed Case Name.TXT" {
		t.Errorf("case-insensitive Stat = %q, %v", fi.Name, err)
	}
	if _, err := g.Open("many"); err == nil {
		t.Errorf("Open(dir) succeeded")
	}
	if _, err := g.Readlink("hello.txt"); err == nil {
		t.Errorf("Readlink(regular file) succeeded")
	}
	list, err := g.ReadDir("many")
	if err != nil || len(list) < 40 {
		t.Errorf("ReadDir(many) = %d entries, %v", len(list), err)
	}
	if !sort.SliceIsSorted(list, func(i, j int) bool { return list[i].Name < list[j].Name }) {
		t.Errorf("ReadDir not sorted")
	}
	if b, err := fs.ReadFile(IOFS(g), "hello.txt"); err != nil || string(b) != "hello, world\n" {
		t.Errorf("fs.ReadFile = %q, %v", b, err)
	}
}

func TestDetectUnknown(t *testing.T) {
	for _, b := range [][]byte{nil, make([]byte, 100), make([]byte, 1<<20), bytes.Repeat([]byte{0xFF}, 1<<16)} {
		if _, err := Detect(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrUnknownFS) {
			t.Errorf("Detect(%d bytes) = %v, want ErrUnknownFS", len(b), err)
		}
		if _, err := Open(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrUnknownFS) {
			t.Errorf("Open(%d bytes) = %v, want ErrUnknownFS", len(b), err)
		}
	}
}

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{
		"a": true, "日本": true, "a b": true, "": false, ".": false, "..": false,
		"a/b": false, "a\x00": false, "...": true, strings.Repeat("x", 2000): false,
	} {
		if validName(name) != ok {
			t.Errorf("validName(%q) = %v", name, !ok)
		}
	}
}
