// Package fusemount picks the FUSE adapter of this build: go-fuse on Linux,
// cgofuse (WinFsp) on Windows, cgofuse (macFUSE) on macOS with cgo, and a
// stub that says mounting is unavailable everywhere else (restic's
// cmd_mount_disabled.go pattern), so the command line builds everywhere.
package fusemount

import "errors"

// Options tune Mount.
type Options struct {
	AllowOther bool // let other users see the mount
	Debug      bool // log every FUSE request
}

// Server is a running mount.
type Server interface {
	// Unmount unmounts; when files are still open the mount is detached
	// lazily (Linux) so the mount point is free at once.
	Unmount() error
	// Wait returns when the server has stopped.
	Wait()
	// Dir is the absolute mount point.
	Dir() string
}

// ErrUnavailable is returned by Mount in builds without a FUSE adapter.
var ErrUnavailable = errors.New("mount: mounting is not available in this build")
