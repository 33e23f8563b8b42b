//go:build !windows

package local

import "os"

// syncDir makes the entries of dir (names created, renamed or removed in it)
// durable. On POSIX systems a file's own fsync does not cover the directory
// entry that names it; without this a renamed object can vanish after a power
// loss even though its data was synced.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
