// Package testenv lets tests that need external tools or /dev/fuse skip
// locally with a reason, while CI (VMVAULT_REQUIRE_TOOLS=1) turns every such
// skip into a failure so that nothing silently goes untested.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
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

// HyperVSamples returns the directory holding the real Hyper-V sample files
// (../shared/samples/hyperv next to the project; never copied into it), or
// skips the test. The samples live outside the repository and their README
// says to skip when they are absent, so this is a plain skip even under
// VMVAULT_REQUIRE_TOOLS=1 — but every place a checkout can sit relative to
// them is tried first, so CI finds them wherever it clones the project.
func HyperVSamples(t testing.TB) string {
	t.Helper()
	if d := findSamples(); d != "" {
		return d
	}
	t.Skip("Hyper-V samples not found (set VMVAULT_HYPERV_SAMPLES or place them at ../shared/samples/hyperv)")
	return ""
}

func findSamples() string {
	var cands []string
	if d := os.Getenv("VMVAULT_HYPERV_SAMPLES"); d != "" {
		cands = append(cands, d)
	}
	// Walk up from the package directory: the repository root's sibling
	// "shared" (and the ancestors' siblings, for nested checkouts).
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			cands = append(cands, filepath.Join(dir, "shared", "samples", "hyperv"))
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	cands = append(cands, "/work/shared/samples/hyperv")
	for _, d := range cands {
		if fi, err := os.Stat(filepath.Join(d, "README.md")); err == nil && fi.Mode().IsRegular() {
			return d
		}
	}
	return ""
}
