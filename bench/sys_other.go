//go:build !unix

package bench

import (
	"os"
	"time"
)

func isMountpoint(dir string) bool { return false }

func selfCPU() (user, sys time.Duration) { return 0, 0 }

func childMaxRSS(ps *os.ProcessState) int64 { return 0 }
