package copyout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/vhdxfs/guest"
)

// memSource is a hostile in-memory tree: names a guest image could carry.
type memSource struct {
	entries map[string]guest.FileInfo // path -> info
	data    map[string][]byte
	dirs    map[string][]string // dir -> raw child names (may be unsafe)
	bad     string              // a file whose reads fail
	badDir  string              // a directory that cannot be listed
}

func (m *memSource) Stat(name string) (guest.FileInfo, error) {
	fi, ok := m.entries[name]
	if !ok {
		return fi, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return fi, nil
}

var errUnlistable = errors.New("unlistable directory")

func (m *memSource) ReadDir(name string) ([]guest.FileInfo, error) {
	if name == m.badDir {
		return nil, errUnlistable
	}
	var out []guest.FileInfo
	for _, c := range m.dirs[name] {
		fi := m.entries[path.Join(name, c)]
		fi.Name = c
		out = append(out, fi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type memFile struct{ *bytes.Reader }

func (memFile) Close() error { return nil }

func (m *memSource) Open(name string) (guest.File, error) {
	if name == m.bad {
		return failingFile{}, nil
	}
	b, ok := m.data[name]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return memFile{bytes.NewReader(b)}, nil
}

func (m *memSource) Readlink(name string) (string, error) { return m.entries[name].Target, nil }

func TestCopyRefusesEscapes(t *testing.T) {
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	src := &memSource{
		entries: map[string]guest.FileInfo{
			".":                {Name: ".", Mode: fs.ModeDir | 0o755, ModTime: mt},
			"dir":              {Name: "dir", Mode: fs.ModeDir | 0o755, ModTime: mt},
			"dir/ok.txt":       {Name: "ok.txt", Mode: 0o644, Size: 5, ModTime: mt},
			"dir/..":           {Name: "..", Mode: 0o644, Size: 4},
			"dir/inlink":       {Name: "inlink", Mode: fs.ModeSymlink | 0o777, Target: "ok.txt"},
			"dir/uplink":       {Name: "uplink", Mode: fs.ModeSymlink | 0o777, Target: "../../../etc/passwd"},
			"dir/abslink":      {Name: "abslink", Mode: fs.ModeSymlink | 0o777, Target: "/etc/passwd"},
			"dir/a\\b":         {Name: "a\\b", Mode: 0o644, Size: 4},
			"dir/sub":          {Name: "sub", Mode: fs.ModeDir | 0o755, ModTime: mt},
			"dir/sub/deep.txt": {Name: "deep.txt", Mode: 0o600, Size: 3, ModTime: mt},
			"dir/sub/backlink": {Name: "backlink", Mode: fs.ModeSymlink | 0o777, Target: "../ok.txt"},
		},
		data: map[string][]byte{"dir/ok.txt": []byte("hello"), "dir/sub/deep.txt": []byte("abc"), "dir/..": []byte("evil"), "dir/a\\b": []byte("evil")},
		dirs: map[string][]string{".": {"dir"}, "dir": {"ok.txt", "..", "inlink", "uplink", "abslink", "a\\b", "sub"}, "dir/sub": {"deep.txt", "backlink"}},
	}
	dest := t.TempDir()
	var skipped []string
	st, err := Copy(context.Background(), src, "dir", dest, Options{Skipped: func(n, r string) { skipped = append(skipped, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 2 || st.Symlinks != 2 || st.Skipped != 4 {
		t.Errorf("stats = %+v, skipped %v; want 2 files, 2 symlinks, 4 skipped", st, skipped)
	}
	got, err := os.ReadFile(filepath.Join(dest, "dir", "sub", "deep.txt"))
	if err != nil || string(got) != "abc" {
		t.Fatalf("deep.txt = %q, %v", got, err)
	}
	fi, err := os.Stat(filepath.Join(dest, "dir", "ok.txt"))
	if err != nil || !fi.ModTime().Equal(mt) {
		t.Errorf("ok.txt mtime = %v, %v; want %v", fi.ModTime(), err, mt)
	}
	if dfi, err := os.Stat(filepath.Join(dest, "dir")); err != nil || !dfi.ModTime().Equal(mt) {
		t.Errorf("dir mtime not kept: %v %v", dfi.ModTime(), err)
	}
	for _, bad := range []string{"uplink", "abslink", "a\\b"} {
		if _, err := os.Lstat(filepath.Join(dest, "dir", bad)); err == nil {
			t.Errorf("%s was created", bad)
		}
	}
	if _, err := os.Lstat(filepath.Join(dest, "evil")); err == nil {
		t.Error("\"..\" entry escaped into dest")
	}
	// Nothing outside dest was touched: everything created is under it.
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.Type()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			abs := filepath.Clean(filepath.Join(filepath.Dir(p), target))
			if !strings.HasPrefix(abs, dest) {
				t.Errorf("symlink %s escapes to %s", p, abs)
			}
		}
		return nil
	})
	if tmp, _ := filepath.Glob(filepath.Join(dest, "dir", ".vmvault-copy-*")); len(tmp) != 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

type failingFile struct{}

func (failingFile) ReadAt(p []byte, off int64) (int, error) { return 0, io.ErrUnexpectedEOF }
func (failingFile) Size() int64                             { return 100 }
func (failingFile) Close() error                            { return nil }

type failSource struct{ memSource }

func (failSource) Open(string) (guest.File, error) { return failingFile{}, nil }

func TestCopyFailureLeavesNothing(t *testing.T) {
	src := &failSource{memSource{entries: map[string]guest.FileInfo{"f": {Name: "f", Mode: 0o644, Size: 100}}}}
	dest := t.TempDir()
	if _, err := Copy(context.Background(), src, "f", dest, Options{}); err == nil {
		t.Fatal("copy of an unreadable file succeeded")
	}
	ents, _ := os.ReadDir(dest)
	if len(ents) != 0 {
		t.Errorf("dest not empty after failed copy: %v", ents)
	}
}

// manyFiles is a tree of n files in nested folders (dir/dNN/fNNN), each
// holding its own name repeated; bad names a file whose reads fail.
func manyFiles(n int, bad string) *memSource {
	mt := time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)
	m := &memSource{
		entries: map[string]guest.FileInfo{".": {Name: ".", Mode: fs.ModeDir | 0o755, ModTime: mt}, "dir": {Name: "dir", Mode: fs.ModeDir | 0o755, ModTime: mt}},
		data:    map[string][]byte{},
		dirs:    map[string][]string{".": {"dir"}},
	}
	for i := range n {
		d := fmt.Sprintf("d%02d", i%10)
		dp := "dir/" + d
		if _, ok := m.entries[dp]; !ok {
			m.entries[dp] = guest.FileInfo{Name: d, Mode: fs.ModeDir | 0o750, ModTime: mt.Add(time.Duration(i) * time.Hour)}
			m.dirs["dir"] = append(m.dirs["dir"], d)
		}
		f := fmt.Sprintf("f%03d", i)
		p := dp + "/" + f
		body := bytes.Repeat([]byte(p+";"), 1+i*37)
		m.entries[p] = guest.FileInfo{Name: f, Mode: 0o640, Size: int64(len(body)), ModTime: mt.Add(time.Duration(i) * time.Minute)}
		m.data[p] = body
		m.dirs[dp] = append(m.dirs[dp], f)
	}
	if bad != "" {
		m.bad = bad
	}
	return m
}

// TestCopyManyFilesAtOnce: 300 files in 10 folders copied by 8 workers
// arrive whole, with their modes and mtimes, the folders' mtimes set after
// their contents, the statistics and progress summed exactly once.
func TestCopyManyFilesAtOnce(t *testing.T) {
	src := manyFiles(300, "")
	dest := t.TempDir()
	var progress int64
	st, err := Copy(context.Background(), src, "dir", dest, Options{Workers: 8, Progress: func(n int64) { progress += n }})
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	for p, b := range src.data {
		want += int64(len(b))
		got, err := os.ReadFile(filepath.Join(dest, filepath.FromSlash(p)))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s: %d bytes, %v; want %d", p, len(got), err, len(b))
		}
		fi, _ := os.Stat(filepath.Join(dest, filepath.FromSlash(p)))
		if e := src.entries[p]; !fi.ModTime().Equal(e.ModTime) || fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mtime %v mode %v, want %v 0640", p, fi.ModTime(), fi.Mode(), e.ModTime)
		}
	}
	if st.Files != 300 || st.Dirs != 11 || st.Bytes != want || progress != want {
		t.Errorf("stats %+v, progress %d; want 300 files, 11 dirs, %d bytes", st, progress, want)
	}
	for d, e := range src.entries {
		if e.Mode.IsDir() && d != "." {
			fi, err := os.Stat(filepath.Join(dest, filepath.FromSlash(d)))
			if err != nil || !fi.ModTime().Equal(e.ModTime) {
				t.Errorf("%s: mtime %v (%v), want %v", d, fi.ModTime(), err, e.ModTime)
			}
		}
	}
}

// TestCopyManyFilesOneFails: when one of many files cannot be read, Copy
// returns that file's error (not the cancellation of the others), and no
// temporary file is left anywhere, nor the failed file under its name.
func TestCopyManyFilesOneFails(t *testing.T) {
	src := manyFiles(300, "dir/d05/f155")
	dest := t.TempDir()
	_, err := Copy(context.Background(), src, "dir", dest, Options{Workers: 8})
	if err == nil || !strings.Contains(err.Error(), "dir/d05/f155") || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want the read error of dir/d05/f155", err)
	}
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".vmvault-copy-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(dest, "dir", "d05", "f155")); err == nil {
		t.Error("the failed file exists under its name")
	}
}

// TestCopyWalkFails: a directory that cannot be listed in the middle of a
// copy fails it with that error (not the cancellation it causes), files
// being copied meanwhile are finished or removed, never left half-written.
func TestCopyWalkFails(t *testing.T) {
	src := manyFiles(300, "")
	src.badDir = "dir/d07"
	dest := t.TempDir()
	_, err := Copy(context.Background(), src, "dir", dest, Options{Workers: 8})
	if !errors.Is(err, errUnlistable) {
		t.Fatalf("err = %v, want %v", err, errUnlistable)
	}
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".vmvault-copy-") {
			t.Errorf("temporary file left: %s", p)
			return nil
		}
		rel, _ := filepath.Rel(dest, p)
		if got, _ := os.ReadFile(p); !bytes.Equal(got, src.data[filepath.ToSlash(rel)]) {
			t.Errorf("%s is not whole", rel)
		}
		return nil
	})
}
