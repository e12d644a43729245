package app

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/internal/route"
)

// TestHostsSuggestFromReportMode runs sluice with policy: report, sends
// what enforce would refuse, and turns its log file into a hosts section
// that sluice accepts and that lists what was refused.
func TestHostsSuggestFromReportMode(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.test")
	cfg := strings.Replace(baseConfig(hosts), "data_dir: data\n", "data_dir: data\npolicy: report\nlog: {file: logs/sluice.log}\n", 1)
	r := startRunLogFile(t, cfg)
	c := r.client()
	// localhost is not listed: report mode lets it past the policy, and the
	// private-address guard refuses it; either way it is reported.
	if _, err := c.Get("https://localhost:9/"); err == nil || !strings.Contains(err.Error(), "upstream address not allowed") {
		t.Errorf("localhost in report mode: %v; the private-address guard must still refuse it", err)
	}
	// api.test:8443 is listed, but not that port: tunneled (not
	// intercepted), so the upstream's own certificate is what the client
	// sees, one signed by a CA the client does not know.
	if _, err := c.Get("https://api.test:8443/"); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("api.test:8443 in report mode: %v, want the tunneled upstream's own certificate", err)
	}
	logFile := filepath.Join(r.dir, "logs", "sluice.log")
	for range 100 {
		if strings.Count(readFileIfAny(logFile), `"msg":"report: enforce would refuse"`) == 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"hosts", "suggest", logFile}, &out, io.Discard); err != nil {
		t.Fatalf("sluice hosts suggest: %v\n%s", err, readFileIfAny(logFile))
	}
	for _, want := range []string{`"localhost": {ports: [9]}`, `#   api.test:8443 (port 8443 not allowed): add 8443 to hosts."api.test".ports`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("suggest lacks %s:\n%s", want, out.String())
		}
	}
	suggested := "listen: {proxy: 127.0.0.1:0, admin: \"off\"}\ndata_dir: data\n" + out.String()
	if _, err := route.Parse([]byte(suggested), "suggested.yaml", t.TempDir(), nil); err != nil {
		t.Errorf("sluice refuses what suggest printed: %v\n%s", err, suggested)
	}
}

// TestSuggestion: each reported host becomes an entry with the profile the
// embedded default gives it, plain_http when it was reached over http and
// ports beyond the defaults; a listed host's refusal becomes its fix; a
// journald prefix and lines that are not report lines are skipped.
func TestSuggestion(t *testing.T) {
	log := `Dec 02 10:00:00 gw sluice[42]: {"level":"WARN","msg":"report: enforce would refuse","host":"api.binance.com","port":443,"scheme":"https","reason":"host not listed","fix":"add \"api.binance.com\" to hosts"}
{"level":"INFO","msg":"request","host":"api.binance.com:443"}
{"level":"WARN","msg":"report: enforce would refuse","host":"deb.debian.org","port":80,"scheme":"http","reason":"host not listed","fix":"x"}
{"level":"WARN","msg":"report: enforce would refuse","host":"git.corp.test","port":443,"scheme":"https","reason":"host in report mode","fix":"x"}
{"level":"WARN","msg":"report: enforce would refuse","host":"git.corp.test","port":8443,"scheme":"https","reason":"host in report mode","fix":"x"}
{"level":"WARN","msg":"report: enforce would refuse","host":"2001:db8::1","port":443,"scheme":"https","reason":"host not listed","fix":"x"}
{"level":"WARN","msg":"report: enforce would refuse","host":"api.bybit.com","port":8443,"scheme":"https","reason":"port 8443 not allowed","fix":"add 8443 to hosts.\"api.bybit.com\".ports"}
not json at all
`
	path := filepath.Join(t.TempDir(), "sluice.log")
	os.WriteFile(path, []byte(log), 0o644)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"hosts", "suggest", path}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"api.binance.com": {profile: binance}`,
		`"deb.debian.org": {plain_http: true}`,
		`"git.corp.test": {ports: [443, 8443]}`,
		`"2001:db8::1": {}`,
		`#   api.bybit.com:8443 (port 8443 not allowed): add 8443 to hosts."api.bybit.com".ports`,
		"6 report lines",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("suggest lacks %s:\n%s", want, out.String())
		}
	}
	suggested := "listen: {proxy: 127.0.0.1:0, admin: \"off\"}\ndata_dir: data\n" + out.String()
	if _, err := route.Parse([]byte(suggested), "suggested.yaml", t.TempDir(), nil); err != nil {
		t.Errorf("sluice refuses what suggest printed: %v\n%s", err, suggested)
	}
	empty := filepath.Join(t.TempDir(), "empty.log")
	os.WriteFile(empty, []byte(`{"msg":"request"}`+"\n"), 0o644)
	if err := Run(context.Background(), []string{"hosts", "suggest", empty}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "policy: report") {
		t.Errorf("a log without report lines: %v, want an error that says how to get them", err)
	}
}
