package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sluice/internal/testenv"
)

// TestSystemdUnit: deploy/sluice.service passes systemd-analyze verify,
// with its binary path pointed at a binary that exists (this test's).
func TestSystemdUnit(t *testing.T) {
	analyze := testenv.RequireTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile(filepath.Join("..", "..", "deploy", "sluice.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/sluice ") {
		t.Fatal("deploy/sluice.service does not start /usr/local/bin/sluice")
	}
	bin, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sluice.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/sluice", bin)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
