package engine

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
)

// newRepo creates a repository with cheap parameters (small KDF, 2+1
// shards) and opens it; it is closed at cleanup.
func newRepo(t testing.TB) (*Repo, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if err := Init(dir, InitOptions{DataShards: 2, ParityShards: 1}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, dir
}

func backup(t testing.TB, r *Repo, o BackupOptions) *BackupResult {
	t.Helper()
	res, err := r.Backup(context.Background(), o)
	if err != nil {
		t.Fatalf("backup %v: %v", o.Sources, err)
	}
	return res
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// gunzipSample unpacks a Hyper-V sample into dir, or skips without it.
func gunzipSample(t testing.TB, name, dir string) string {
	t.Helper()
	src := filepath.Join(testenv.HyperVSamples(t), name+".gz")
	f, err := os.Open(src)
	if err != nil {
		testenv.Skip(t, "Hyper-V sample missing: "+src)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, name)
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// vhdiFacts returns the facts vhdiinfo shows that a restore must keep:
// "Identifier" (the DataWriteGuid), "Media size", "Bytes per sector".
func vhdiFacts(t testing.TB, path string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range strings.Split(runTool(t, "vhdiinfo", path), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			switch k = strings.TrimSpace(k); k {
			case "Identifier", "Media size", "Bytes per sector":
				out[k] = strings.TrimSpace(v)
			}
		}
	}
	if out["Identifier"] == "" {
		t.Fatalf("vhdiinfo %s: no Identifier line", path)
	}
	return out
}

// copyFile copies src to dst (sparse where src has zero 64 KiB blocks).
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	fi, _ := in.Stat()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := in.ReadAt(buf, off)
		if n > 0 && !isZero(buf[:n]) {
			if _, werr := out.WriteAt(buf[:n], off); werr != nil {
				t.Fatal(werr)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Truncate(fi.Size()); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
