package engine

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmvault/vmvault/internal/testdisks"
)

// TestJobByteCounters: the job records carry the bytes of their kind:
// backup read/new/stored (as the recovery point says), restore written
// (disk data plus configuration files), check read (the manifests; with
// --read-data also every shard file, data and parity).
func TestJobByteCounters(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	vm := filepath.Join(t.TempDir(), "vm")
	os.MkdirAll(filepath.Join(vm, "Virtual Hard Disks"), 0o755)
	os.MkdirAll(filepath.Join(vm, "Virtual Machines"), 0o755)
	copyFile(t, filepath.Join(td, testdisks.GPTVHDX), filepath.Join(vm, "Virtual Hard Disks", "gpt.vhdx"))
	cfg := []byte("<configuration/>\n")
	os.WriteFile(filepath.Join(vm, "Virtual Machines", "vm.xml"), cfg, 0o644)
	res := backup(t, r, BackupOptions{VM: "c", Sources: []string{vm}})
	rr, err := r.Restore(context.Background(), RestoreOptions{VM: "c", To: filepath.Join(t.TempDir(), "out"), Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Check(context.Background(), CheckOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Check(context.Background(), CheckOptions{ReadData: true}); err != nil {
		t.Fatal(err)
	}
	jobs, err := ListJobs(r.dir)
	if err != nil || len(jobs) != 4 {
		t.Fatalf("jobs: %v %v", jobs, err)
	}
	b, rs, c, cd := jobs[0], jobs[1], jobs[2], jobs[3]
	p := res.Pointer
	if b.Kind != "backup" || b.BytesRead != p.BytesRead || b.BytesNew != p.BytesNew || b.BytesStored != p.BytesStored ||
		b.BytesRead == 0 || b.BytesNew == 0 || b.BytesStored == 0 || b.BytesWritten != 0 || !b.Full {
		t.Errorf("backup job: %+v (recovery point read %d new %d stored %d)", b, p.BytesRead, p.BytesNew, p.BytesStored)
	}
	var data int64
	for _, d := range res.Manifest.Disks {
		data += d.BytesData
	}
	if rs.Kind != "restore" || rs.BytesWritten != data+int64(len(cfg)) || rr.BytesWritten != rs.BytesWritten || data == 0 {
		t.Errorf("restore job: written %d, want disk data %d + config %d", rs.BytesWritten, data, len(cfg))
	}
	var shards int64
	filepath.Walk(filepath.Join(r.dir, "data", "packs"), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			shards += fi.Size()
		}
		return nil
	})
	if c.Kind != "check" || c.BytesRead != p.ManifestSize || cd.BytesRead != p.ManifestSize+shards || shards == 0 {
		t.Errorf("check jobs: read %d and %d, want the manifest (%d) and the manifest + all shards (%d)", c.BytesRead, cd.BytesRead, p.ManifestSize, p.ManifestSize+shards)
	}
}
