package guest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testenv"
)

func init() { debugPanics = true }

// treeOpts says which features a filesystem can hold.
type treeOpts struct {
	symlinks  bool
	hardlinks bool
	huge      bool // a sparse > 2 GiB file
	small     bool // FAT12 floppy: keep it under ~1 MiB
}

const (
	manyLinks  = 24
	hugeSize   = 3<<30 + 5
	hugeMarker = 2560 << 20
)

var deepPath = func() string {
	var parts []string
	for i := 0; i < 5; i++ {
		parts = append(parts, fmt.Sprintf("level%d_%s", i, strings.Repeat("x", 45)))
	}
	parts = append(parts, "a file at the end of a very long path.txt")
	return strings.Join(parts, "/")
}()

// makeTree writes the source tree every filesystem test copies in.
func makeTree(t testing.TB, dir string, o treeOpts) {
	t.Helper()
	write := func(p string, b []byte) {
		t.Helper()
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			t.Fatal(err)
		}
		setTime(t, full)
	}
	rnd := rand.New(rand.NewChaCha8([32]byte{1, 2, 3}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	write("hello.txt", []byte("hello, world\n"))
	write("empty.txt", nil)
	write("日本語/ファイル名.txt", []byte("こんにちは\n"))
	write("dir with spaces/Mixed Case Name.TXT", []byte("mixed"))
	write("SHORT.TXT", []byte("an 8.3 name"))
	write(deepPath, []byte("deep\n"))
	if o.small {
		write("mid.bin", random(100_000))
		for i := 0; i < 40; i++ {
			write(fmt.Sprintf("many/file %03d.txt", i), []byte(fmt.Sprint(i)))
		}
	} else {
		write("big.bin", random(3<<20+123))
		for i := 0; i < 300; i++ {
			write(fmt.Sprintf("many/file with a longer name %03d.txt", i), []byte(fmt.Sprint(i)))
		}
		// Sparse: an 8 MiB file with data at 4 MiB and in its last bytes.
		sp := filepath.Join(dir, "sparse.bin")
		f, err := os.Create(sp)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("middle"), 4<<20)
		f.WriteAt([]byte("end"), 8<<20-3)
		f.Close()
		setTime(t, sp)
	}
	if o.huge {
		f, err := os.Create(filepath.Join(dir, "huge.bin"))
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("HUGE"), hugeMarker)
		f.Truncate(hugeSize)
		f.Close()
		setTime(t, f.Name())
	}
	if o.hardlinks {
		write("hard_a.txt", []byte("one file, three names\n"))
		os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
		must(t, os.Link(filepath.Join(dir, "hard_a.txt"), filepath.Join(dir, "sub", "hard_b.txt")))
		must(t, os.Link(filepath.Join(dir, "hard_a.txt"), filepath.Join(dir, "hard_c.txt")))
		// 24 names overflow one 1 KiB NTFS MFT record: the $FILE_NAMEs
		// move to extension records behind an $ATTRIBUTE_LIST.
		write("links/target.txt", []byte("many names\n"))
		for i := 0; i < manyLinks-1; i++ {
			must(t, os.Link(filepath.Join(dir, "links/target.txt"), filepath.Join(dir, fmt.Sprintf("links/name with some length %02d.txt", i))))
		}
	}
	if o.symlinks {
		must(t, os.Symlink("hello.txt", filepath.Join(dir, "link_rel")))
		must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "link_abs")))
		must(t, os.Symlink(strings.Repeat("slow/", 30)+"target", filepath.Join(dir, "link_slow")))
		must(t, os.Symlink("../hello.txt", filepath.Join(dir, "dir with spaces", "link_up")))
	}
}

// setTime gives files even-second mtimes so FAT's 2-second resolution
// keeps them exact.
func setTime(t testing.TB, p string) {
	mt := time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TZ=UTC", "MTOOLS_SKIP_CHECK=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// srcEntry is what the source tree says about one path.
type srcEntry struct {
	dir    bool
	size   int64
	sha    string
	target string
	mtime  time.Time
}

func hashReader(r io.Reader) string {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "error: " + err.Error()
	}
	return hex.EncodeToString(h.Sum(nil))
}

func scanSource(t testing.TB, dir string) map[string]srcEntry {
	t.Helper()
	m := map[string]srcEntry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := srcEntry{dir: fi.IsDir(), mtime: fi.ModTime()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			e.target, _ = os.Readlink(p)
			e.size = int64(len(e.target))
		case fi.Mode().IsRegular():
			e.size = fi.Size()
			if e.size < 1<<30 {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				e.sha = hashReader(f)
				f.Close()
			}
		}
		m[filepath.ToSlash(rel)] = e
		return nil
	})
	must(t, err)
	return m
}

// imageFile opens an image as the io.ReaderAt the package reads.
func imageFile(t testing.TB, path string) (*os.File, int64) {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	must(t, err)
	return f, st.Size()
}

// --- image builders (VHDX-NOTES 6.2) ---

func buildExt4(t testing.TB, src string) string { return buildExt4Size(t, src, "64M") }

func buildExt4Size(t testing.TB, src, size string) string {
	testenv.NeedTools(t, "mkfs.ext4", "e2fsck")
	img := filepath.Join(t.TempDir(), "ext4.img")
	run(t, "mkfs.ext4", "-F", "-q", "-L", "LINUXVOL", "-d", src, img, size)
	// -D rebuilds and indexes directories, so "many/" becomes an HTree.
	cmd := exec.Command("e2fsck", "-fyD", img)
	cmd.Run() // exit status 1 means "fixed/optimised", which is the point
	run(t, "e2fsck", "-fn", img)
	return img
}

// buildNTFS copies src into a fresh NTFS image through an ntfs-3g FUSE
// mount (ntfscp cannot create directories).
func buildNTFS(t testing.TB, src string, sizeMB int, out string) string {
	testenv.NeedTools(t, "mkntfs", "ntfs-3g", "umount")
	testenv.NeedFUSE(t)
	if out == "" {
		out = filepath.Join(t.TempDir(), "ntfs.img")
	}
	f, err := os.Create(out)
	must(t, err)
	must(t, f.Truncate(int64(sizeMB)<<20))
	f.Close()
	run(t, "mkntfs", "-F", "-Q", "-q", "-L", "NTFSVOL", out)
	mnt, err := os.MkdirTemp("", "guest-ntfs-mnt")
	must(t, err)
	defer os.Remove(mnt)
	run(t, "ntfs-3g", out, mnt)
	defer func() {
		if err := exec.Command("umount", mnt).Run(); err != nil {
			exec.Command("umount", "-l", mnt).Run()
		}
	}()
	run(t, "cp", "-a", "--sparse=always", src+"/.", mnt+"/")
	must(t, exec.Command("umount", mnt).Run())
	return out
}

func buildFAT(t testing.TB, src string, bits int) string {
	testenv.NeedTools(t, "mkfs.vfat", "mcopy")
	img := filepath.Join(t.TempDir(), fmt.Sprintf("fat%d.img", bits))
	args := []string{"-F", fmt.Sprint(bits), "-n", fmt.Sprintf("FAT%dVOL", bits), "-C", img}
	switch bits {
	case 12:
		args = append(args, "1440")
	case 16:
		args = append(args, "32768")
	default:
		args = append(args, "-s", "1", "65536")
	}
	run(t, "mkfs.vfat", args...)
	entries, err := os.ReadDir(src)
	must(t, err)
	for _, e := range entries {
		run(t, "mcopy", "-s", "-m", "-i", img, filepath.Join(src, e.Name()), "::/")
	}
	return img
}

// flsEntry is one line of `fls -r -p`.
type flsEntry struct {
	kind string // "r" or "d"
	meta string // inode / MFT address (first number)
}

func flsList(t testing.TB, img string, skip func(string) bool) map[string]flsEntry {
	t.Helper()
	testenv.NeedTools(t, "fls", "icat")
	out := run(t, "fls", "-r", "-p", img)
	m := map[string]flsEntry{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		head, p, ok := strings.Cut(line, "\t")
		if !ok || strings.Contains(head, "*") {
			continue // deleted or unparsable
		}
		f := strings.Fields(head)
		if len(f) < 2 {
			continue
		}
		if skip(p) {
			continue
		}
		meta := strings.TrimSuffix(f[len(f)-1], ":")
		meta, _, _ = strings.Cut(meta, "-")
		m[p] = flsEntry{kind: strings.Split(f[0], "/")[1], meta: meta}
	}
	return m
}
