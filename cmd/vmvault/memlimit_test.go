package main

import (
	"testing"

	"github.com/vmvault/vmvault/engine"
)

// TestBackupMemoryLimit: the limit grows with the workers, and the default
// (0) means the engine's default worker count, so a server with many cores
// is not held to the 2-core figure.
func TestBackupMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		workers int
		want    int64
	}{{1, 384 << 20}, {3, 384 << 20}, {8, 704 << 20}, {65, (192 + 65*64) << 20}} {
		if got := backupMemoryLimit(c.workers); got != c.want {
			t.Errorf("workers %d: %d MiB, want %d", c.workers, got>>20, c.want>>20)
		}
	}
	if got, want := backupMemoryLimit(0), backupMemoryLimit(engine.DefaultWorkers()); got != want {
		t.Errorf("default workers: %d MiB, want %d (for %d workers)", got>>20, want>>20, engine.DefaultWorkers())
	}
}
