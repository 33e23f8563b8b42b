package chunkstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCrashGCHelper is the child of TestCrashGC: it runs GC with the
// chunks listed in VMVAULT_GC_LIVE (raw 32-byte IDs) live, until killed.
func TestCrashGCHelper(t *testing.T) {
	dir := os.Getenv("VMVAULT_GC_DIR")
	if dir == "" {
		t.Skip("helper process of TestCrashGC")
	}
	b, err := os.ReadFile(os.Getenv("VMVAULT_GC_LIVE"))
	if err != nil {
		t.Fatal(err)
	}
	live := make(map[ID]bool)
	for i := 0; i+32 <= len(b); i += 32 {
		live[ID(b[i:i+32])] = true
	}
	testHookGCDropped = func(PackID) { time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) }
	s, err := Open(dir, OpenOptions{Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(context.Background(), func(id ID) bool { return live[id] }, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestCrashGC kills a garbage collection at random moments: the repository
// must open with Check clean and every live chunk readable.
func TestCrashGC(t *testing.T) {
	runs := 12
	if testing.Short() {
		runs = 4
	}
	dir := newRepo(t, 2, InitOptions{DataShards: 2, ParityShards: 1, PackSize: 512 << 10,
		ChunkMin: 32 << 10, ChunkAvg: 64 << 10, ChunkMax: 256 << 10})
	s := openT(t, dir, OpenOptions{Logf: func(string, ...any) {}})
	a := osLike(t, 6<<20)
	refsA, _ := ingestAll(t, s, a)
	var live []byte
	for i, r := range refsA {
		if i%3 != 0 { // 2/3 live: some packs sparse, repacked
			live = append(live, r.ID[:]...)
		}
	}
	liveFile := filepath.Join(t.TempDir(), "live")
	os.WriteFile(liveFile, live, 0o600)
	s.Close()
	r := rand.New(rand.NewPCG(5, 6))
	finished := 0 // pack deletions finished at Open after a kill
	for run := range runs {
		s := openT(t, dir, OpenOptions{Logf: func(string, ...any) {}})
		ingestAll(t, s, randBytes(uint64(run), 3<<20)) // garbage to collect
		s.Close()
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashGCHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "VMVAULT_GC_DIR="+dir, "VMVAULT_GC_LIVE="+liveFile)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(10+r.IntN(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		s = openT(t, dir, OpenOptions{Logf: func(f string, a ...any) {
			if strings.Contains(f, "garbage collection interrupted") {
				finished++
			}
		}})
		rep, err := s.Check(context.Background(), false)
		if err != nil || !rep.OK() {
			t.Fatalf("run %d: check: %v %s", run, err, rep)
		}
		for i, ref := range refsA {
			if i%3 == 0 {
				continue
			}
			got, err := s.Get(context.Background(), ref.ID)
			if err != nil || !bytes.Equal(got, a[ref.Offset:ref.Offset+int64(ref.Length)]) {
				t.Fatalf("run %d: live chunk %s: %v", run, ref.ID, err)
			}
		}
		t.Logf("run %d: %d packs after", run, rep.Packs)
		s.Close()
	}
	t.Logf("%d interrupted pack deletions finished at Open", finished)
}
