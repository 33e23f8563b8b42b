//go:build linux

package fusemount

import (
	"github.com/vmvault/vmvault/mount"
	"github.com/vmvault/vmvault/mount/gofuse"
)

// Adapter names the FUSE implementation of this build.
const Adapter = "go-fuse"

// Mount mounts t read-only at dir and serves it in the background.
func Mount(t *mount.Tree, dir string, o Options) (Server, error) {
	s, err := gofuse.Mount(t, dir, gofuse.Options{AllowOther: o.AllowOther, Debug: o.Debug})
	if err != nil {
		return nil, err
	}
	return s, nil
}
