package copyout

import (
	"bytes"
	"context"
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
}

func (m *memSource) Stat(name string) (guest.FileInfo, error) {
	fi, ok := m.entries[name]
	if !ok {
		return fi, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return fi, nil
}

func (m *memSource) ReadDir(name string) ([]guest.FileInfo, error) {
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
