package chunkstore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/restic/chunker"
)

const crashSegments = 8

// crashData is run r's input: the base data with one byte per 4 KiB
// changed, so every run's chunks are new while compressibility stays.
func crashData(base []byte, run int) []byte {
	d := append([]byte(nil), base...)
	for i := 0; i < len(d); i += 4096 {
		d[i] ^= byte(run + 1)
	}
	return d
}

// chunkIDs cuts data like Ingest does and returns the chunk IDs.
func chunkIDs(t testing.TB, s *Store, data []byte) []ID {
	c := chunker.NewWithBoundaries(bytes.NewReader(data), s.cfg.polynomial(), uint(s.cfg.Chunker.Min), uint(s.cfg.Chunker.Max))
	c.SetAverageBits(bits.Len(uint(s.cfg.Chunker.Avg)) - 1)
	var ids []ID
	buf := make([]byte, 0, s.cfg.Chunker.Max)
	for {
		ch, err := c.Next(buf)
		if err == io.EOF {
			return ids
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ChunkID(ch.Data))
	}
}

// TestCrashHelper is the child of TestCrash: it ingests its run's data
// segment by segment, printing "durable i" after each Flush, until killed.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv("VMVAULT_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process of TestCrash")
	}
	run, _ := strconv.Atoi(os.Getenv("VMVAULT_CRASH_RUN"))
	base, err := os.ReadFile(os.Getenv("VMVAULT_CRASH_DATA"))
	if err != nil {
		t.Fatal(err)
	}
	// Widen the window between durable shards and the index commit.
	testHookAfterShards = func(PackID) {
		if rand.IntN(2) == 0 {
			time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
		}
	}
	s, err := Open(dir, OpenOptions{Password: []byte("pw"), Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	data := crashData(base, run)
	seg := len(data) / crashSegments
	for i := range crashSegments {
		if _, err := s.Ingest(context.Background(), bytes.NewReader(data[i*seg:(i+1)*seg]), nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("durable %d\n", i)
	}
	s.Close()
	fmt.Println("done")
}

// TestCrash kills an ingesting helper process with SIGKILL at random
// moments. After each kill: the repository opens, Check is clean (no index
// entry points to a missing pack, no pending pack left), every segment the
// helper reported durable is fully present and readable, and ingesting the
// run's data again stores exactly the chunks that were not yet durable.
func TestCrash(t *testing.T) {
	runs := 20
	if testing.Short() {
		runs = 5
	}
	pw := []byte("pw")
	dir := newRepo(t, 3, InitOptions{DataShards: 4, ParityShards: 2, Password: pw, PackSize: 1 << 20,
		ChunkMin: 64 << 10, ChunkAvg: 128 << 10, ChunkMax: 512 << 10})
	base := append(osLike(t, 12<<20), randBytes(5, 4<<20)...)
	dataFile := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(dataFile, base, 0o600); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(42, 43))
	killedMidway := 0
	// Kill within the time a whole helper run takes on this machine (it
	// varies with load): start with a guess, shrink when a run finishes.
	window := 600 * time.Millisecond
	for run := range runs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "VMVAULT_CRASH_DIR="+dir, "VMVAULT_CRASH_DATA="+dataFile,
			"VMVAULT_CRASH_RUN="+strconv.Itoa(run))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		durable := -1
		done := false
		lines := make(chan struct{})
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if n, ok := strings.CutPrefix(sc.Text(), "durable "); ok {
					durable, _ = strconv.Atoi(n)
				}
				if sc.Text() == "done" {
					done = true
				}
			}
		}()
		t0 := time.Now()
		time.Sleep(time.Duration(r.Int64N(int64(window))))
		cmd.Process.Signal(syscall.SIGKILL)
		<-lines
		cmd.Wait()
		if !done {
			killedMidway++
		} else {
			window = time.Since(t0) * 8 / 10
		}

		s := openT(t, dir, OpenOptions{Password: pw, Logf: func(string, ...any) {}})
		rep, err := s.Check(context.Background(), false)
		if err != nil || !rep.OK() {
			t.Fatalf("run %d (durable %d): check: %v %s", run, durable, err, rep)
		}
		data := crashData(base, run)
		seg := len(data) / crashSegments
		for i := 0; i <= durable; i++ {
			ids := chunkIDs(t, s, data[i*seg:(i+1)*seg])
			has, err := s.Has(context.Background(), ids)
			if err != nil {
				t.Fatal(err)
			}
			for j, h := range has {
				if !h {
					t.Fatalf("run %d: segment %d reported durable but chunk %s is missing", run, i, ids[j])
				}
			}
		}
		// Re-ingest the whole run: exactly the missing chunks are stored.
		missing := make(map[ID]bool)
		for i := range crashSegments {
			ids := chunkIDs(t, s, data[i*seg:(i+1)*seg])
			has, _ := s.Has(context.Background(), ids)
			for j, h := range has {
				if !h {
					missing[ids[j]] = true
				}
			}
		}
		var stored int64
		var refs []Ref
		for i := range crashSegments {
			st, err := s.Ingest(context.Background(), bytes.NewReader(data[i*seg:(i+1)*seg]), func(r Ref) {
				r.Offset += int64(i * seg)
				refs = append(refs, r)
			})
			if err != nil {
				t.Fatal(err)
			}
			stored += st.NewChunks
		}
		if err := s.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if stored != int64(len(missing)) {
			t.Fatalf("run %d: re-ingest stored %d chunks, %d were missing", run, stored, len(missing))
		}
		verifyRefs(t, s, data[:seg*crashSegments], refs)
		t.Logf("run %d: durable segments %d, re-stored %d chunks", run, durable+1, stored)
		s.Close()
	}
	if killedMidway < runs/2 {
		t.Fatalf("only %d of %d runs were killed before finishing", killedMidway, runs)
	}
	s := openT(t, dir, OpenOptions{Password: pw})
	defer s.Close()
	if rep, err := s.Check(context.Background(), true); err != nil || !rep.OK() {
		t.Fatalf("final check: %v %s", err, rep)
	}
}
