//go:build !unix

package testdisks

import "os"

// lockFile is a no-op where flock does not exist; the fixtures need Linux
// tools anyway, so tests skip there before building.
func lockFile(*os.File) error { return nil }
