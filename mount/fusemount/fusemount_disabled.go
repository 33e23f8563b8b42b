//go:build !linux && !windows && !(darwin && cgo)

package fusemount

import (
	"fmt"
	"runtime"

	"github.com/vmvault/vmvault/mount"
)

// Adapter names the FUSE implementation of this build.
const Adapter = ""

// Mount always fails: this build has no FUSE adapter (macOS needs cgo for
// macFUSE). `vmvault files` gives the same tree without FUSE.
func Mount(t *mount.Tree, dir string, o Options) (Server, error) {
	hint := ""
	if runtime.GOOS == "darwin" {
		hint = " (macOS builds need cgo and macFUSE: CGO_ENABLED=1)"
	}
	return nil, fmt.Errorf("%w%s; use vmvault files ls/cp instead", ErrUnavailable, hint)
}
