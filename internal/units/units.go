// Package units parses the sizes the command line and the bench harness
// take (--cache-size 256M, --chunk-avg 1M, --size 8G).
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads 1048576, 512K, 256M, 1.5G, 1T (powers of 1024; an
// optional B or iB suffix is accepted). Zero, negative and absurd sizes
// (over 1 PiB) are errors.
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || n <= 0 || n*float64(mult) > 1<<50 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int64(n * float64(mult)), nil
}
