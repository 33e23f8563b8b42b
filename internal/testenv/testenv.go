// Package testenv lets tests that need external tools or /dev/fuse skip
// locally with a reason, while CI (VMVAULT_REQUIRE_TOOLS=1) turns every such
// skip into a failure so that nothing silently goes untested.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether missing tools must fail tests instead of skipping.
func Required() bool { return os.Getenv("VMVAULT_REQUIRE_TOOLS") == "1" }

// Skip skips the test with reason, or fails it when tools are required.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("VMVAULT_REQUIRE_TOOLS=1 but: %s", reason)
	}
	t.Skip(reason)
}

// NeedTools skips (or fails under VMVAULT_REQUIRE_TOOLS=1) unless every
// named program is on PATH.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Skip(t, "needs "+tool+" on PATH (Debian packages: see .ci/run)")
		}
	}
}

// NeedFUSE skips unless /dev/fuse exists and we are root.
func NeedFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Skip(t, "needs /dev/fuse")
	}
	if os.Geteuid() != 0 {
		Skip(t, "needs root to mount FUSE directly")
	}
}
