package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"sluice/internal/doctor"
	"sluice/internal/testenv"
)

// TestDoctor runs sluice doctor in a shell set up by sluice env, then in
// shells set up wrong: each client that bypasses sluice or does not trust
// its CA fails with the line that fixes it, and those set up right pass
// with a request that went through sluice.
func TestDoctor(t *testing.T) {
	testenv.RequireTool(t, "curl")
	python := testenv.RequireTool(t, "/usr/bin/python3", "python3") // Debian's, with requests and aiohttp
	r := startRun(t, baseConfig(upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "a.test")))
	for _, kv := range envFrom(t, r.cliConfig()) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	proxy := "http://" + r.addrs["proxy"]
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		t.Setenv(k, proxy)
	}
	t.Setenv("NO_PROXY", "localhost")
	t.Setenv("no_proxy", "localhost")
	run := func() map[string]doctor.Result {
		t.Helper()
		var out bytes.Buffer
		err := Run(context.Background(), []string{"doctor", "-c", r.cliConfig(), "--url", "https://a.test/", "--python", python, "--json"}, &out, io.Discard)
		var results []doctor.Result
		if jerr := json.Unmarshal(out.Bytes(), &results); jerr != nil {
			t.Fatalf("sluice doctor --json: %v (%v)\n%s", jerr, err, out.String())
		}
		m := map[string]doctor.Result{}
		failed := 0
		for _, res := range results {
			m[res.Check] = res
			if res.Status == "fail" {
				failed++
			}
		}
		if (failed > 0) != (err != nil) {
			t.Errorf("sluice doctor: %d checks failed, exit error %v", failed, err)
		}
		return m
	}
	expect := func(m map[string]doctor.Result, check, status, detail, fix string) {
		t.Helper()
		got, ok := m[check]
		if !ok {
			t.Errorf("no check %q in %v", check, m)
			return
		}
		if got.Status != status || !strings.Contains(got.Detail, detail) || !strings.Contains(got.Fix, fix) {
			t.Errorf("%s: %+v, want %s with %q, fix %q", check, got, status, detail, fix)
		}
	}

	m := run()
	expect(m, "HTTPS_PROXY", "ok", proxy, "")
	expect(m, "REQUESTS_CA_BUNDLE", "ok", "holds sluice's CA", "")
	expect(m, "curl", "ok", "200 through sluice, certificate verified", "")
	expect(m, "Python requests", "ok", "200 through sluice", "")
	// Debian's certifi is the system bundle, without sluice's CA: ccxt's
	// async client (and freqtrade's candles) fail as they would.
	expect(m, "aiohttp as ccxt.async_support (freqtrade) opens it", "fail", "does not trust sluice's CA", `"cafile"`)

	// A shell that lost REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE: those two fail with the variable to set.
	t.Setenv("REQUESTS_CA_BUNDLE", "")
	t.Setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
	t.Setenv("SSL_CERT_FILE", "")
	m = run()
	expect(m, "CURL_CA_BUNDLE", "fail", "does not hold sluice's CA", "export CURL_CA_BUNDLE=")
	expect(m, "curl", "fail", "does not trust sluice's CA", "export CURL_CA_BUNDLE=")
	expect(m, "Python requests", "fail", "does not trust sluice's CA", "export REQUESTS_CA_BUNDLE=")

	// No proxy at all: every client looks a.test up itself.
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		t.Setenv(k, "")
	}
	m = run()
	expect(m, "HTTPS_PROXY", "fail", "not set", "sluice env")
	expect(m, "curl", "fail", "bypasses sluice", "HTTPS_PROXY")
	expect(m, "Python requests", "fail", "bypasses sluice", "HTTPS_PROXY")
}
