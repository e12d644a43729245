package route

import (
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"sluice/internal/ca"
)

// TestStageTable: docs/architecture.md's stage table names the stages Build makes, in
// their order (the head, a route's tail, the forwarder).
func TestStageTable(t *testing.T) {
	table, d := buildTable(t, "hosts:\n  api.binance.com: {}\n")
	var built []string
	for _, s := range table.head(d) {
		built = append(built, s.name)
	}
	for _, s := range table.tail(d, table.routes["api.binance.com"], nil) {
		built = append(built, s.name)
	}
	built = append(built, "forwarder")

	readme, err := os.ReadFile("../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "\n| stage | package |")
	if !ok {
		t.Fatal("docs/architecture.md has no stage table (| stage | package | ...)")
	}
	var documented []string
	for _, line := range strings.Split(rest, "\n")[2:] {
		if !strings.HasPrefix(line, "| ") {
			break
		}
		documented = append(documented, strings.TrimSpace(strings.Split(line, "|")[1]))
	}
	if !slices.Equal(documented, built) {
		t.Errorf("docs/architecture.md's stage table lists\n  %v\nBuild makes\n  %v", documented, built)
	}
}

// TestNoBudgetNoThrottleStage: a route without a budget has no throttle
// stage; one with a budget has it.
func TestNoBudgetNoThrottleStage(t *testing.T) {
	table, d := buildTable(t, "hosts:\n  api.binance.com: {}\n  plain.example: {}\n")
	for host, want := range map[string]bool{"api.binance.com": true, "plain.example": false} {
		has := false
		for _, s := range table.tail(d, table.routes[host], nil) {
			has = has || s.name == "throttle" && s.mw != nil
		}
		if has != want {
			t.Errorf("route %s has a throttle stage: %v, want %v", host, has, want)
		}
	}
}

// buildTable compiles doc and builds its gateway as sluice run does.
func buildTable(t *testing.T, doc string) (*Table, Deps) {
	t.Helper()
	dir := t.TempDir()
	table, err := Parse([]byte(doc), "test.yaml", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.OpenRoot(dir, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	gw, _, err := NewGateway(table, Components{Root: root, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return table, gw.Deps
}
