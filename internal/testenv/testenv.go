// Package testenv holds what tests need from the machine they run on.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequireTool returns the path of the named program. If it is missing the
// test is skipped with a message naming it, or fails when
// SLUICE_REQUIRE_INTEGRATION=1 (as in CI, which installs every such tool).
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("SLUICE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s is required (SLUICE_REQUIRE_INTEGRATION=1) but not installed: %v", name, err)
	}
	t.Skipf("skipping: %s is not installed (apt-get install %s)", name, name)
	return ""
}
