package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/testpki"
)

// entryPoint is one way into sluice. get sends a GET for path through it
// (to the test's upstream, or to an unlisted host) and returns the answer.
type entryPoint struct {
	name string
	get  func(t *testing.T, h *harness, path string, unlisted bool) (int, http.Header, []byte)
	// refusesAtConnect: an unlisted or banned client is refused at its
	// CONNECT, before any request (checked with a raw CONNECT).
	refusesAtConnect bool
	// hasHosts and hasBudget say whether the entry point routes by host
	// and spends a budget (the reverse listener has one backend and none).
	hasHosts, hasBudget bool
	decision            string
}

func interceptEntry(name string, h2 bool) entryPoint {
	return entryPoint{name: name, refusesAtConnect: true, hasHosts: true, hasBudget: true, decision: "intercept",
		get: func(t *testing.T, h *harness, path string, unlisted bool) (int, http.Header, []byte) {
			if unlisted {
				resp, body := connect(t, h.proxyAddr, "evil.test:443")
				return resp.StatusCode, resp.Header, body
			}
			return do(t, h.clientOnce(name, func() *http.Client { return h.client(h2) }), "https://api.test"+path)
		}}
}

var entryPoints = []entryPoint{
	interceptEntry("intercept HTTP/1.1", false),
	interceptEntry("intercept HTTP/2", true),
	{name: "HTTPS proxy", refusesAtConnect: true, hasHosts: true, hasBudget: true, decision: "intercept",
		get: func(t *testing.T, h *harness, path string, unlisted bool) (int, http.Header, []byte) {
			if unlisted {
				resp, body := connect(t, h.proxyAddr, "evil.test:443")
				return resp.StatusCode, resp.Header, body
			}
			return do(t, h.clientOnce("HTTPS proxy", func() *http.Client {
				tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "https", Host: h.tlsAddr}), TLSClientConfig: &tls.Config{RootCAs: h.pool()}}
				t.Cleanup(tr.CloseIdleConnections)
				return &http.Client{Transport: tr}
			}), "https://api.test"+path)
		}},
	// A client that DNS sent to sluice: its target is the SNI, and an
	// unlisted name gets a TLS alert, not an answer (TestTransparentTLS).
	{name: "transparent TLS", hasBudget: true, decision: "intercept",
		get: func(t *testing.T, h *harness, path string, _ bool) (int, http.Header, []byte) {
			return do(t, h.clientOnce("transparent TLS", func() *http.Client { return transparentClient(h, &tls.Config{RootCAs: h.pool()}) }),
				"https://api.test"+path)
		}},
	{name: "transparent HTTP", hasHosts: true, hasBudget: true, decision: "intercept",
		get: func(t *testing.T, h *harness, path string, unlisted bool) (int, http.Header, []byte) {
			host := "plain.test"
			if unlisted {
				host = "evil.test"
			}
			return do(t, h.clientOnce("transparent HTTP", func() *http.Client {
				tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "tcp", h.transparentHTTPAddr)
				}}
				t.Cleanup(tr.CloseIdleConnections)
				return &http.Client{Transport: tr}
			}), "http://"+host+path)
		}},
	{name: "absolute URI", hasHosts: true, hasBudget: true, decision: "intercept",
		get: func(t *testing.T, h *harness, path string, unlisted bool) (int, http.Header, []byte) {
			host := "plain.test"
			if unlisted {
				host = "evil.test"
			}
			c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr})}}
			return do(t, c, "http://"+host+path)
		}},
	{name: "reverse listener", decision: "reverse",
		get: func(t *testing.T, h *harness, path string, _ bool) (int, http.Header, []byte) {
			return do(t, http.DefaultClient, "http://"+h.reverseAddr+path)
		}},
}

func do(t *testing.T, c *http.Client, rawURL string) (int, http.Header, []byte) {
	t.Helper()
	resp, body := get(t, c, rawURL)
	return resp.StatusCode, resp.Header, body
}

// clientOnce is the client named name, made once for the test (a
// connection for the ban case that must outlive one request).
func (h *harness) clientOnce(name string, make func() *http.Client) *http.Client {
	if h.clients == nil {
		h.clients = map[string]*http.Client{}
	}
	if c := h.clients[name]; c != nil {
		return c
	}
	h.clients[name] = make()
	return h.clients[name]
}

// pipelineHarness runs sluice with one upstream behind api.test (TLS),
// plain.test (plain HTTP) and the reverse listener, all with the binance
// profile's rules, a cache rule for /cached and a budget of one /budget
// request an hour. hits counts the requests the upstream saw by path.
func pipelineHarness(t *testing.T) (*harness, *pathCounter) {
	hits := &pathCounter{}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.add(r.URL.Path)
		echoHandler(w, r)
	})
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, handler, "api.test")
	shared := "    rules: binance\n    cache: {rules: [{path: /cached, ttl: 1m}]}\n" +
		"    throttle: {model: window, limit: 1, window: 1h, path_regex: '^/(budget|cached/budget)', max_wait: 10ms}\n"
	plain, plainAddr := plainEntry(t, "plain.test", handler, shared)
	hosts := upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String(), shared) + plain
	reverse := fmt.Sprintf("reverse: {addr: 127.0.0.1:0, backend: http://%s, rules: binance, cache: {mode: rules, rules: [{path: /cached, ttl: 1m}]}}", plainAddr)
	return newHarness(t, hosts, reverse), hits
}

type pathCounter struct{ withdraw, total atomic.Int64 }

func (c *pathCounter) add(path string) {
	c.total.Add(1)
	if p := strings.ToLower(path); strings.Contains(p, "withdraw") || strings.Contains(p, "giftcard") {
		c.withdraw.Add(1)
	}
}

// TestEveryEntryPointDecidesAlike sends the same requests through every
// entry point and expects the same decision and the same answer.
func TestEveryEntryPointDecidesAlike(t *testing.T) {
	for _, ep := range entryPoints {
		t.Run(ep.name, func(t *testing.T) {
			h, hits := pipelineHarness(t)
			expect := func(what string, status int, body []byte, wantStatus int, wantError string) {
				t.Helper()
				if status != wantStatus {
					t.Fatalf("%s: status %d %s, want %d", what, status, body, wantStatus)
				}
				if wantError != "" {
					if got := decodeError(t, body).Error; got != wantError {
						t.Errorf("%s: error %q, want %q", what, got, wantError)
					}
				}
			}

			status, _, body := ep.get(t, h, "/ok", false)
			expect("allowed", status, body, http.StatusOK, "")
			h.expectDecision(t, "/ok", ep.decision, "")

			if ep.hasHosts {
				status, _, body = ep.get(t, h, "/ok", true)
				expect("host not listed", status, body, http.StatusForbidden, "host not listed")
			}

			status, _, body = ep.get(t, h, "/sapi/v1/capital/withdraw/apply", false)
			expect("rule violation", status, body, http.StatusForbidden, "rule_violation")
			h.expectDecision(t, "/sapi/v1/capital/withdraw/apply", "deny", "rules")

			ep.get(t, h, "/cached", false)
			_, hdr, _ := ep.get(t, h, "/cached", false)
			if hdr.Get("X-Cache") != "HIT" {
				t.Errorf("second GET /cached: X-Cache %q, want HIT", hdr.Get("X-Cache"))
			}

			if ep.hasBudget {
				ep.get(t, h, "/budget", false)
				status, hdr, body = ep.get(t, h, "/budget", false)
				expect("over budget", status, body, http.StatusTooManyRequests, "upstream budget exhausted")
				if hdr.Get("Retry-After") == "" {
					t.Error("over budget: no Retry-After")
				}
				h.expectDecision(t, "/budget", "intercept", "budget")
				// A cacheable path: the budget refuses the cache's fill,
				// and the leader's line says so.
				status, _, body = ep.get(t, h, "/cached/budget", false)
				expect("cacheable, over budget", status, body, http.StatusTooManyRequests, "upstream budget exhausted")
				h.expectDecision(t, "/cached/budget", "intercept", "budget")
			}

			h.bans.Add(t.Context(), "127.0.0.1", time.Hour, "test")
			status, _, body = ep.get(t, h, "/ok", false) // a kept-alive intercepted connection: its next request
			expect("banned client", status, body, http.StatusForbidden, "client banned")
			if ep.refusesAtConnect {
				resp, body := connect(t, h.proxyAddr, "api.test:443")
				expect("banned client's CONNECT", resp.StatusCode, body, http.StatusForbidden, "client banned")
			}
			if n := hits.withdraw.Load(); n != 0 {
				t.Errorf("the upstream saw %d withdrawal requests", n)
			}
		})
	}
}

// expectDecision finds the access line of the last request for path and
// checks its decision and the stage that refused it.
func (h *harness) expectDecision(t *testing.T, path, decision, refusedBy string) {
	t.Helper()
	var line map[string]any
	waitFor(t, "the access line of "+path, func() bool {
		for _, l := range h.accessLines() {
			if l["path"] == path {
				line = l
			}
		}
		return line != nil
	})
	got, _ := line["refused_by"].(string)
	if line["decision"] != decision || got != refusedBy {
		t.Errorf("access line of %s: decision %v refused_by %q, want %s and %q", path, line["decision"], got, decision, refusedBy)
	}
}

// TestPathSpellingsCannotWithdraw: every spelling of the binance profile's
// withdrawal endpoints is refused through every entry point, over HTTP/1.1
// and HTTP/2, and none reaches the upstream.
func TestPathSpellingsCannotWithdraw(t *testing.T) {
	spellings := []string{
		"/sapi/v1/capital/withdraw/apply",
		"//sapi/v1/capital/withdraw/apply",
		"/sapi//v1/capital/withdraw/apply",
		"/sapi/v1/./capital/withdraw/apply",
		"/sapi/v1/x/../capital/withdraw/apply",
		"/SAPI/v1/capital/withdraw/apply",
		"/sapi/v1/capital/Withdraw/apply",
		"/sapi/v1/giftcard//createCode",
		"/sapi/v1/giftcard/createcode/",
		"/%73api/v1/capital/%57ithdraw/apply",
		"/sapi/v1/capital%2Fwithdraw/apply",
		"/sapi/v1/capital/withdraw%2fapply",
		"/sapi/v1/capital\\withdraw/apply",
		"/sapi/v1/%2e%2e/v1/capital/withdraw/apply",
	}
	for _, ep := range entryPoints {
		t.Run(ep.name, func(t *testing.T) {
			h, hits := pipelineHarness(t)
			for _, p := range spellings {
				status, _, body := ep.get(t, h, p, false)
				if status != http.StatusForbidden && status != http.StatusBadRequest {
					t.Errorf("GET %s: status %d %s, want 403 or 400", p, status, body)
				}
			}
			if n := hits.withdraw.Load(); n != 0 {
				t.Errorf("the upstream saw %d of the withdrawal spellings", n)
			}
		})
	}
}
