//go:build !unix

package chunkstore

import (
	"fmt"
	"os"
)

// lockRepo on non-Unix systems only creates the lock file; Badger's own
// directory lock on the index keeps a second process out.
func lockRepo(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: lock: %w", err)
	}
	return f, nil
}

func unlockRepo(f *os.File) { f.Close() }
