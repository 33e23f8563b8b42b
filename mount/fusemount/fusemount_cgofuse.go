//go:build windows || (darwin && cgo)

package fusemount

import (
	"runtime"

	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/cgofuse"
)

// Adapter names the FUSE implementation of this build.
var Adapter = map[string]string{"windows": "cgofuse (WinFsp)", "darwin": "cgofuse (macFUSE)"}[runtime.GOOS]

// Mount mounts t read-only at dir and serves it in the background.
func Mount(t *mount.Tree, dir string, o Options) (Server, error) {
	s, err := cgofuse.Mount(t, dir, cgofuse.Options{AllowOther: o.AllowOther, Debug: o.Debug})
	if err != nil {
		return nil, err
	}
	return s, nil
}
