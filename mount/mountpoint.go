package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// CheckMountpoint returns dir as an absolute path, or one clear error when
// it cannot be mounted on: missing, not a directory, a dead FUSE mount, or
// already a mount point. On Windows (WinFsp) the rule is the reverse: a
// directory mount point must not exist yet (its parent must), or it is a
// drive letter such as "X:".
func CheckMountpoint(dir string) (string, error) {
	if runtime.GOOS == "windows" {
		return checkWindowsMountpoint(dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("mount: %w", err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("mount: mount point %s does not exist (create the directory first)", abs)
	case errors.Is(err, syscall.ENOTCONN):
		return "", fmt.Errorf("mount: mount point %s is a dead FUSE mount (run: fusermount3 -u %s)", abs, abs)
	case err != nil:
		return "", fmt.Errorf("mount: mount point %s: %w", abs, err)
	case !fi.IsDir():
		return "", fmt.Errorf("mount: mount point %s is not a directory", abs)
	}
	if mountedOn(abs) {
		return "", fmt.Errorf("mount: mount point %s is in use (already a mount point; unmount it first)", abs)
	}
	return abs, nil
}

func checkWindowsMountpoint(dir string) (string, error) {
	if len(dir) == 2 && dir[1] == ':' {
		if _, err := os.Stat(dir + `\`); err == nil {
			return "", fmt.Errorf("mount: drive %s is in use", dir)
		}
		return dir, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("mount: %w", err)
	}
	if _, err := os.Stat(abs); err == nil {
		return "", fmt.Errorf("mount: mount point %s already exists (WinFsp creates it; give a new name or a free drive letter like X:)", abs)
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("mount: parent directory of mount point %s does not exist", abs)
	}
	return abs, nil
}

// mountedOn reports whether dir is a mount point according to
// /proc/self/mountinfo (Linux). Elsewhere it reports false and the FUSE
// library's own error is shown.
func mountedOn(dir string) bool {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == real {
			return true
		}
	}
	return false
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			v, ok := 0, true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + int(c-'0')
			}
			if ok {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
