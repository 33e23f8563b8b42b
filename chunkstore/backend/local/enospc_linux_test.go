package local

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend/backendtest"
)

// TestENOSPC fills a 1 MiB tmpfs: the Put must fail with an error that
// still matches syscall.ENOSPC and names the file, leave no temp file, and
// keep the previous version of the object.
func TestENOSPC(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Skipf("needs permission to mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	b := open(t, dir, nil)
	old := backendtest.Data(1, 100_000)
	backendtest.Put(t, b, "pool0/obj", old)

	big := backendtest.Data(2, 2<<20)
	err := b.Put(context.Background(), "pool0/obj", bytes.NewReader(big), int64(len(big)))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put on a full disk = %v, want ENOSPC", err)
	}
	if !strings.HasPrefix(err.Error(), "local: put pool0/obj: ") || !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q lacks the prefix or the path", err)
	}
	t.Logf("error: %v", err)
	if got := backendtest.Get(t, b, "pool0/obj"); !bytes.Equal(got, old) {
		t.Error("failed Put damaged the previous version")
	}
	assertNoTempFiles(t, dir)
	if got := backendtest.Names(t, b, ""); len(got) != 1 {
		t.Errorf("List = %q", got)
	}
	// Space is back once the debris is gone: a small Put works.
	if err := b.Put(context.Background(), "pool0/small", bytes.NewReader(old[:1000]), 1000); err != nil {
		t.Errorf("Put after ENOSPC: %v", err)
	}
}
