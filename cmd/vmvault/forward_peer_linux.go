//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// forwardSupported: the mount serves other vmvault processes (forward.go).
const forwardSupported = true

// checkPeer returns the pid of the process at the other end of c, or an
// error when it may not talk to us. The server (ofClient: the peer is a
// client) serves its own uid and root only. A client talks to a mount of
// its own uid or root's; root to any mount it can reach (it already
// trusts the repository directory it names).
func checkPeer(c *net.UnixConn, ofClient bool) (pid int32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("forward: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("forward: peer credentials: %w", err)
	}
	if cerr != nil {
		return 0, fmt.Errorf("forward: peer credentials: %w", cerr)
	}
	me := uint32(os.Geteuid())
	if cred.Uid == me || cred.Uid == 0 || !ofClient && me == 0 {
		return cred.Pid, nil
	}
	return cred.Pid, fmt.Errorf("forward: pid %d runs as uid %d, neither %d nor root", cred.Pid, cred.Uid, me)
}

// sockAddr returns a name for path that fits a sockaddr_un (108 bytes with
// the NUL): a long one is reached through /proc/self/fd of its directory,
// held open until release.
func sockAddr(path string) (addr string, release func(), err error) {
	if len(path) < 100 {
		return path, func() {}, nil
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), filepath.Base(path)), func() { d.Close() }, nil
}
