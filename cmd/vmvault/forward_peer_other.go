//go:build !linux

package main

import (
	"net"
	"runtime"
)

// forwardSupported: the mount serves other vmvault processes (forward.go)
// where a socket file's mode keeps other users out. Not on Windows.
const forwardSupported = runtime.GOOS != "windows"

// checkPeer: no portable peer credentials here; the socket's mode 0600
// (set before it is reachable) is the check.
func checkPeer(c *net.UnixConn, ofClient bool) (pid int32, err error) { return 0, nil }

// sockAddr returns path; long paths are not shortened here.
func sockAddr(path string) (addr string, release func(), err error) {
	return path, func() {}, nil
}
