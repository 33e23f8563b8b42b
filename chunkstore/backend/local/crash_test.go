package local

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/backendtest"
)

// The crash test re-executes the test binary as a helper that Puts objects
// in a loop, SIGKILLs it at a random moment, and then checks what a process
// kill can break: every listed object is complete and byte-exact, no temp
// file is listed, every acknowledged Put is visible, and nothing appears
// that was never written. (Power loss, i.e. whether fsync really reached
// the disk, cannot be tested by killing a process; that needs a VM or
// dm-flakey.)

const crashHelperEnv = "VMVAULT_LOCAL_CRASH_HELPER_DIR"

const (
	crashWriters = 4
	crashNames   = 40 // names k with k%crashWriters == writer belong to it
)

func crashName(k int) string { return fmt.Sprintf("crash/%02x/obj-%02d", k%8, k) }

// crashContent is self-describing: 8 bytes length, 8 bytes seed, then
// pseudo-random bytes from the seed. A checker needs nothing but the bytes.
func crashContent(seed uint64, n int) []byte {
	p := backendtest.Data(seed, n)
	binary.LittleEndian.PutUint64(p[0:8], uint64(n))
	binary.LittleEndian.PutUint64(p[8:16], seed)
	return p
}

func checkCrashContent(p []byte) (seed uint64, err error) {
	if len(p) < 16 {
		return 0, fmt.Errorf("only %d bytes", len(p))
	}
	n := binary.LittleEndian.Uint64(p[0:8])
	seed = binary.LittleEndian.Uint64(p[8:16])
	if n != uint64(len(p)) {
		return seed, fmt.Errorf("header says %d bytes, object has %d (torn)", n, len(p))
	}
	if !bytes.Equal(p, crashContent(seed, len(p))) {
		return seed, fmt.Errorf("content differs from seed %d (mixed or corrupt)", seed)
	}
	return seed, nil
}

// TestHelperProcess is the crash helper; it does nothing in a normal run.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(crashHelperEnv)
	if dir == "" {
		return
	}
	// No cleanup at Open: the parent inspects the debris.
	b, err := Open(dir, &Options{TempMaxAge: -1})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...) // one write(2) per line
	}
	say("ready")
	var wg sync.WaitGroup
	for w := range crashWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			for {
				k := r.IntN(crashNames/crashWriters)*crashWriters + w
				name := crashName(k)
				seed := r.Uint64()
				n := 16 + r.IntN(256<<10)
				if r.IntN(8) == 0 {
					n = 16 + r.IntN(4<<20) // some big ones widen the window
				}
				data := crashContent(seed, n)
				say("begin %s %d", name, seed)
				if err := b.Put(context.Background(), name, bytes.NewReader(data), int64(n)); err != nil {
					say("error %v", err)
					os.Exit(2)
				}
				say("done %s %d", name, seed)
			}
		}()
	}
	wg.Wait()
}

// crashState is what the parent knows about one name.
type crashState struct {
	committed, inflight       uint64
	hasCommitted, hasInflight bool
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns helper processes; skipped in -short")
	}
	dir := t.TempDir()
	state := make(map[string]*crashState)
	const runs = 25
	runsWithDebris, totalDone := 0, 0
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for run := range runs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Start the clock when the helper is ready, not when exec starts,
		// so every run spends its 50-200 ms Putting.
		if l, ok := <-lines; !ok || l != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("run %d: helper said %q instead of ready", run, l)
		}
		killAt := time.After(time.Duration(50+rng.IntN(151)) * time.Millisecond)
		var events []string
	collect:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break collect
				}
				events = append(events, l)
			case <-killAt:
				if err := cmd.Process.Kill(); err != nil { // SIGKILL on Unix
					t.Fatal(err)
				}
				killAt = nil
			}
		}
		// The helper never exits on its own; a nil error would mean it
		// stopped Putting before we killed it.
		if err := cmd.Wait(); err == nil {
			t.Fatalf("run %d: helper exited normally, want killed", run)
		}

		// Replay the helper's log: one goroutine per name, so per name the
		// lines are in Put order.
		for _, l := range events {
			f := strings.Fields(l)
			if len(f) != 3 {
				t.Fatalf("run %d: helper said %q", run, l)
			}
			seed, err := strconv.ParseUint(f[2], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			s := state[f[1]]
			if s == nil {
				s = &crashState{}
				state[f[1]] = s
			}
			switch f[0] {
			case "begin":
				s.inflight, s.hasInflight = seed, true
			case "done":
				s.committed, s.hasCommitted = seed, true
				s.hasInflight = false
				totalDone++
			}
		}

		if len(tempFiles(t, dir)) > 0 {
			runsWithDebris++
		}
		verifyCrashDir(t, dir, state, run)
		if t.Failed() {
			return
		}
		// What is on disk now is the new committed state; in-flight Puts
		// of this run are over.
		for _, s := range state {
			s.hasInflight = false
		}
	}
	b := open(t, dir, nil)
	if _, err := b.Clean(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	assertNoTempFiles(t, dir)
	t.Logf("%d runs, %d acknowledged Puts, %d names; killed mid-Put (temp file left) in %d runs",
		runs, totalDone, len(state), runsWithDebris)
	if runsWithDebris == 0 {
		t.Log("warning: no run was killed in the middle of a Put")
	}
}

// verifyCrashDir checks the directory after a kill and updates state to what
// it holds.
func verifyCrashDir(t *testing.T, dir string, state map[string]*crashState, run int) {
	t.Helper()
	b, err := Open(dir, &Options{TempMaxAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	present := make(map[string]bool)
	for _, name := range backendtest.Names(t, b, "") {
		if strings.Contains(name, backend.ReservedPrefix) {
			t.Errorf("run %d: List shows temp file %s", run, name)
			continue
		}
		present[name] = true
		s := state[name]
		if s == nil {
			t.Errorf("run %d: %s exists but was never written", run, name)
			continue
		}
		seed, err := checkCrashContent(backendtest.Get(t, b, name))
		if err != nil {
			t.Errorf("run %d: %s: %v", run, name, err)
			continue
		}
		ok := (s.hasCommitted && seed == s.committed) || (s.hasInflight && seed == s.inflight)
		if !ok {
			t.Errorf("run %d: %s holds seed %d, want the acknowledged %d (or in-flight %d, %v)",
				run, name, seed, s.committed, s.inflight, s.hasInflight)
		}
		s.committed, s.hasCommitted = seed, true
	}
	for name, s := range state {
		if s.hasCommitted && !present[name] {
			t.Errorf("run %d: acknowledged %s is missing", run, name)
		}
	}
}
