//go:build linux

package gofuse

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/internal/fusetest"
	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

func mountGoFuse(t testing.TB, tree *mount.Tree, dir string) (fusetest.Mounted, error) {
	return Mount(tree, dir, Options{})
}

// TestSuite runs the adapter conformance suite on a real go-fuse mount.
func TestSuite(t *testing.T) { fusetest.Run(t, mountGoFuse) }

// TestEngine runs the oracle checks on a go-fuse mount of a real repository.
func TestEngine(t *testing.T) { fusetest.RunEngine(t, mountGoFuse) }

// TestSparse: SEEK_DATA/SEEK_HOLE and st_blocks of a mounted .raw follow
// its allocation map, and a sparse copy equals the source.
func TestSparse(t *testing.T) {
	repo := fusetest.NewRepo(t)
	mnt, _, _ := fusetest.MountTree(t, mountGoFuse, mount.DirSource{Root: repo.Root}, mount.Options{})
	p := filepath.Join(mnt, fusetest.VM1, fusetest.VM1RP1, "disks", "gpt.raw")
	d, err := vhdxfs.Open(filepath.Join(repo.Dir, testdisks.GPTVHDX))
	if err != nil {
		t.Fatal(err)
	}
	alloc := vdisk.NormalizeExtents(d.Allocated(), d.Size())
	d.Close()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if want := (vdisk.AllocatedBytes(alloc) + 511) / 512; st.Blocks != want {
		t.Errorf("st_blocks %d, want %d", st.Blocks, want)
	}
	var vst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(mnt, fusetest.VM1, fusetest.VM1RP1, "disks", "gpt.vhdx"), &vst); err != nil || vst.Blocks != (vst.Size+511)/512 {
		t.Errorf("gpt.vhdx: st_blocks %d for %d bytes (%v): the VHDX view is all data", vst.Blocks, vst.Size, err)
	}
	// Walk the data ranges with lseek: they must be exactly the map.
	var got []vdisk.Extent
	for off := int64(0); ; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no more data
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, vdisk.Extent{Off: data, Len: hole - data})
		off = hole
	}
	if fmt.Sprint(got) != fmt.Sprint(alloc) {
		t.Errorf("lseek map %v, want %v", got, alloc)
	}
	testenv.NeedTools(t, "cp", "cmp")
	dst := filepath.Join(t.TempDir(), "gpt.raw")
	if out, err := exec.Command("cp", "--sparse=always", p, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if out, err := exec.Command("cmp", dst, filepath.Join(repo.Dir, testdisks.GPTRaw)).CombinedOutput(); err != nil {
		t.Errorf("sparse copy differs: %v %s", err, out)
	}
}

// TestReadAheadRaised: as root, the mount's kernel read-ahead is raised so
// sequential reads arrive as 1 MiB requests, not 128 KiB ones.
func TestReadAheadRaised(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root may set a mount's read_ahead_kb")
	}
	repo := fusetest.NewRepo(t)
	mnt, _, _ := fusetest.MountTree(t, mountGoFuse, mount.DirSource{Root: repo.Root}, mount.Options{})
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	// In a container sysfs is often read-only: the mount then keeps the
	// kernel's 128 KiB, by design, and there is nothing to check.
	if err := os.WriteFile(p, b, 0); errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		t.Logf("%s is not writable here (%v): the mount keeps the default read-ahead", p, err)
		return
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(readAheadKB) {
		t.Errorf("%s = %s, want %d", p, got, readAheadKB)
	}
}

// TestLentResult: a lent reply gives its bytes through both of go-fuse's
// paths and ends its loan once.
func TestLentResult(t *testing.T) {
	ended := 0
	r := &lentResult{bufs: [][]byte{[]byte("ab"), []byte("cde")}, release: func() { ended++ }}
	if r.Size() != 5 {
		t.Errorf("Size %d", r.Size())
	}
	if b, st := r.Bytes(make([]byte, 0, 8)); !st.Ok() || string(b) != "abcde" {
		t.Errorf("Bytes %q %v", b, st)
	}
	if s, _ := r.Slices(); len(s) != 2 {
		t.Errorf("Slices %q", s)
	}
	r.Done()
	r.Done()
	if ended != 1 {
		t.Errorf("loan ended %d times, want 1", ended)
	}
}

// TestNoXattrOrFlushRoundTrips: the mount answers FLUSH, GETXATTR and
// LISTXATTR with ENOSYS, which the kernel remembers: listxattr and getxattr
// then fail with EOPNOTSUPP ("no xattrs here", what cp -a and rsync -X
// expect of such a filesystem) and close needs no round trip. go-fuse's
// defaults cost three requests per file of a folder copy.
func TestNoXattrOrFlushRoundTrips(t *testing.T) {
	repo := fusetest.NewRepo(t)
	mnt, _, _ := fusetest.MountTree(t, mountGoFuse, mount.DirSource{Root: repo.Root}, mount.Options{})
	p := filepath.Join(mnt, fusetest.VM1, fusetest.VM1RP1, "vm.json")
	for i := range 2 { // the second time the kernel answers by itself
		if _, err := unix.Listxattr(p, make([]byte, 256)); err != unix.ENOTSUP {
			t.Errorf("listxattr #%d: %v, want %v", i+1, err, unix.ENOTSUP)
		}
		if _, err := unix.Getxattr(p, "user.x", make([]byte, 256)); err != unix.ENOTSUP {
			t.Errorf("getxattr #%d: %v, want %v", i+1, err, unix.ENOTSUP)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Read(make([]byte, 16)); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Errorf("close #%d: %v", i+1, err)
		}
	}
}
