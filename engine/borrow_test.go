package engine

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestBorrowCloseKeepsStore: closing a borrowed handle leaves the owner's
// store usable, and a backup through the handle is visible to the owner.
func TestBorrowCloseKeepsStore(t *testing.T) {
	r, dir := newRepo(t)
	data := make([]byte, 3<<20)
	rng := rand.NewChaCha8([32]byte{7})
	rng.Read(data)
	src := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	b := r.Borrow()
	res := backup(t, b, BackupOptions{VM: "web01", Sources: []string{src}})
	if err := b.Close(); err != nil {
		t.Fatalf("borrowed close: %v", err)
	}
	if b.Dir() != dir {
		t.Errorf("Dir %q, want %q", b.Dir(), dir)
	}
	m, err := r.LoadManifest(context.Background(), res.Pointer.VMGUID, res.Pointer.ID)
	if err != nil {
		t.Fatalf("owner after borrowed close: %v", err)
	}
	d, err := r.OpenDisk(m, m.Disks[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := d.ReadAt(buf, 1<<20); err != nil {
		t.Fatalf("read after borrowed close: %v", err)
	}
	if !bytes.Equal(buf, data[1<<20:1<<20+4096]) {
		t.Errorf("data read through the owner differs")
	}
	d.Close()
}

// TestBorrowCopiesEveryField fails when Repo gains a field, so that Borrow
// is taught to share it.
func TestBorrowCopiesEveryField(t *testing.T) {
	if n := reflect.TypeFor[Repo]().NumField(); n != 5 {
		t.Errorf("Repo has %d fields; update Borrow (it copies Catalog, dir, store, logf) and this count", n)
	}
}
