//go:build linux && cgo && fuse3

package cgofuse

import (
	"testing"

	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/internal/fusetest"
)

func mountCgofuse(t testing.TB, tree *mount.Tree, dir string) (fusetest.Mounted, error) {
	return Mount(tree, dir, Options{})
}

// TestSuite runs the adapter conformance suite on a real libfuse3 mount
// (go test -tags fuse3 ./mount/cgofuse/).
func TestSuite(t *testing.T) { fusetest.Run(t, mountCgofuse) }

// TestEngine runs the oracle checks on a libfuse3 mount of a real repository.
func TestEngine(t *testing.T) { fusetest.RunEngine(t, mountCgofuse) }
