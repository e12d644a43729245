package proxy_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"sluice/internal/policy"
	"sluice/internal/testpki"
)

// reportLines are the report-mode log lines the harness has logged.
func (h *harness) reportLines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == policy.ReportMsg {
			out = append(out, m)
		}
	}
	return out
}

// TestPolicyReport: with policy: report, what enforce would refuse goes
// through untouched and is logged once per host, port and reason; an
// entry's mode: deny is still refused, the private-address guard still
// holds, and nothing is intercepted (no leaf minted, the upstream's own
// certificate reaches the client).
func TestPolicyReport(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	plain := httptest.NewServer(http.HandlerFunc(echoHandler))
	t.Cleanup(plain.Close)
	h := newHarness(t, fmt.Sprintf(`  api.test: {connect_to: %s, allow_private: true}
  plain.test: {connect_to: %s, allow_private: true}
  blocked.test: {mode: deny}`, up.Listener.Addr(), plain.Listener.Addr()), "policy: report")
	h.resolver.set("unlisted.test", "127.0.0.1")

	tunnelClient := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: upCA.Pool()}, // the upstream's CA only: no interception
	}}
	t.Cleanup(tunnelClient.CloseIdleConnections)
	for range 3 {
		resp, body := get(t, tunnelClient, "https://api.test:8443/x") // port not in api.test's ports
		if resp.StatusCode != http.StatusOK || resp.TLS.PeerCertificates[0].Issuer.CommonName != "upstream CA" {
			t.Fatalf("api.test:8443 in report mode: %d %s", resp.StatusCode, body)
		}
		tunnelClient.CloseIdleConnections() // a new CONNECT each time
	}
	resp, body := get(t, tunnelClient, "http://plain.test/y") // plain_http not set
	if resp.StatusCode != http.StatusOK {
		t.Errorf("plain http in report mode: %d %s", resp.StatusCode, body)
	}
	if resp, body := connect(t, h.proxyAddr, "blocked.test:443"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("mode: deny in report mode: %d %s, want 403", resp.StatusCode, body)
	}
	if resp, body := connect(t, h.proxyAddr, "unlisted.test:443"); resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "upstream address not allowed") {
		t.Errorf("an unlisted host on loopback in report mode: %d %s, want the private-address guard's 403", resp.StatusCode, body)
	}

	want := map[string]string{
		"api.test:8443":     "port 8443 not allowed",
		"plain.test:80":     "plain http not allowed",
		"unlisted.test:443": "host not listed",
	}
	waitFor(t, "the report lines", func() bool { return len(h.reportLines()) >= len(want) })
	lines := h.reportLines()
	if len(lines) != len(want) {
		t.Errorf("%d report lines, want one per host, port and reason (%d):\n%v", len(lines), len(want), lines)
	}
	for _, l := range lines {
		target := fmt.Sprintf("%s:%v", l["host"], l["port"])
		if want[target] != l["reason"] || l["fix"] == "" {
			t.Errorf("report line %v: want reason %q and a fix", l, want[target])
		}
	}
	if n := h.metric("sluice_policy_reported_total", "", ""); n != 5 {
		t.Errorf("sluice_policy_reported_total = %v, want 5 (3 tunnels, 1 plain request, 1 refused by the guard)", n)
	}
	if n := h.metric("sluice_ca_leaves_minted_total", "", ""); n != 0 {
		t.Errorf("report mode minted %v leaves", n)
	}
}

// TestModeReportEntry: an entry's mode: report lets every host it covers
// through as a tunnel, on any port, and logs each host once, with the fix
// that lists it.
func TestModeReportEntry(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "a.corp.test", "b.corp.test")
	port := up.Listener.Addr().(*net.TCPAddr).Port
	h := newHarness(t, `  "*.corp.test": {mode: report, allow_private: true}`)
	h.resolver.set("a.corp.test", "127.0.0.1")
	h.resolver.set("b.corp.test", "127.0.0.1")
	c := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: upCA.Pool()},
	}}
	t.Cleanup(c.CloseIdleConnections)
	for _, host := range []string{"a.corp.test", "b.corp.test", "a.corp.test"} {
		u := fmt.Sprintf("https://%s:%d/", host, port)
		if resp, body := get(t, c, u); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s", u, resp.StatusCode, body)
		}
		c.CloseIdleConnections()
	}
	if resp, body := connect(t, h.proxyAddr, "other.test:443"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a host outside the report entry: %d %s, want 403 (policy is enforce)", resp.StatusCode, body)
	}
	waitFor(t, "two report lines", func() bool { return len(h.reportLines()) >= 2 })
	for _, l := range h.reportLines() {
		if l["entry"] != "*.corp.test" || l["reason"] != "host in report mode" || !strings.Contains(l["fix"].(string), fmt.Sprintf("add %q to hosts", l["host"])) {
			t.Errorf("report line %v", l)
		}
	}
	if n := len(h.reportLines()); n != 2 {
		t.Errorf("%d report lines, want 2 (a.corp.test once, b.corp.test once)", n)
	}
}
