package flock

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestExcludesWithinProcess(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "windows" && runtime.GOOS != "darwin" {
		t.Skip("no lock primitive")
	}
	p := filepath.Join(t.TempDir(), "lock")
	a, err := TryLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("second TryLock: %v, want ErrLocked", err)
	}
	start := time.Now()
	if _, err := Wait(context.Background(), p, 30*time.Millisecond); !errors.Is(err, ErrLocked) || time.Since(start) < 30*time.Millisecond {
		t.Fatalf("Wait on a held lock: %v after %v", err, time.Since(start))
	}
	go func() { time.Sleep(20 * time.Millisecond); a.Unlock() }()
	b, err := Wait(context.Background(), p, 10*time.Second)
	if err != nil {
		t.Fatalf("Wait after release: %v", err)
	}
	b.Unlock()
	b.Unlock() // idempotent
}

// TestReleasedWhenProcessDies: a lock held by a killed process is free.
func TestReleasedWhenProcessDies(t *testing.T) {
	if os.Getenv("FLOCK_TEST_HOLD") != "" {
		if _, err := TryLock(os.Getenv("FLOCK_TEST_HOLD")); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	p := filepath.Join(t.TempDir(), "lock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestReleasedWhenProcessDies$")
	cmd.Env = append(os.Environ(), "FLOCK_TEST_HOLD="+p)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if n, _ := out.Read(buf); !strings.HasPrefix(string(buf[:n]), "held") {
		t.Fatalf("helper: %q", buf[:n])
	}
	if _, err := TryLock(p); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock of another process: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := TryLock(p)
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	l.Unlock()
}
