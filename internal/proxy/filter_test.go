package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/testpki"
)

// TestWithdrawalRefusedByProfile: the Binance profile refuses the endpoints
// that move funds out, even with a valid key; `rules: off` re-allows them.
func TestWithdrawalRefusedByProfile(t *testing.T) {
	var seen atomic.Int64
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		io.WriteString(w, `{"id":"1"}`)
	}), "api.binance.com", "api1.binance.com")
	caPath := upCA.WritePEM(t, t.TempDir())
	addr := up.Listener.Addr().String()
	h := newHarness(t, upstreamEntry(t, "api.binance.com", caPath, addr, "    profile: binance\n")+
		upstreamEntry(t, "api1.binance.com", caPath, addr, "    profile: binance\n    rules: \"off\"\n"))
	c := h.client(false)
	req, _ := http.NewRequest("POST", "https://api.binance.com/sapi/v1/capital/withdraw/apply?coin=BTC&address=x&amount=1&signature=s", nil)
	req.Header.Set("X-MBX-APIKEY", "key")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if e := decodeError(t, body); resp.StatusCode != 403 || e.Error != "rule_violation" || !strings.Contains(string(body), `"rule":"binance"`) {
		t.Errorf("withdrawal: %d %s, want 403 rule_violation by rule binance", resp.StatusCode, body)
	}
	if seen.Load() != 0 {
		t.Error("the withdrawal reached the upstream")
	}
	req, _ = http.NewRequest("POST", "https://api1.binance.com/sapi/v1/capital/withdraw/apply?coin=BTC", nil)
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("with rules: off: %v %v, want the withdrawal forwarded", resp, err)
	}
}

// TestBannedClientRefusedBeforeBody: a client past its violation threshold
// is refused at its next CONNECT, and on a kept-alive connection before the
// body it announces is read.
func TestBannedClientRefusedBeforeBody(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }), "node.test")
	h := newHarness(t, upstreamEntry(t, "node.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String(), "    rules: strict\n"),
		"rule_sets:\n  strict:\n    methods: [GET, POST]\n    ban: {violations: 2, window: 1m, duration: 10m}")
	conn, tc := dialIntercepted(t, h, "node.test:443")
	defer conn.Close()
	br := bufio.NewReader(tc)
	for i := range 2 {
		fmt.Fprint(tc, "DELETE /x HTTP/1.1\r\nHost: node.test\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("violation %d: status %d, want 405", i+1, resp.StatusCode)
		}
	}
	// Announce a large body, send none: the answer must not wait for it.
	fmt.Fprint(tc, "POST /upload HTTP/1.1\r\nHost: node.test\r\nContent-Length: 10000000\r\n\r\n")
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("banned client waiting for an answer without sending its body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "client banned") {
		t.Errorf("banned client: %d %s", resp.StatusCode, body)
	}
	if resp, _ := connect(t, h.proxyAddr, "node.test:443"); resp.StatusCode != 403 {
		t.Errorf("banned client's next CONNECT: %d, want 403", resp.StatusCode)
	}
	if !strings.Contains(h.logs.String(), `"msg":"rule_violation","client_ip":"127.0.0.1"`) {
		t.Error("no rule_violation line for fail2ban")
	}
}

// TestChunkedOversizeBodyCutOff: a chunked body past max_body_bytes is cut
// off while it streams and answered 413.
func TestChunkedOversizeBodyCutOff(t *testing.T) {
	var got atomic.Int64
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got.Store(n)
	}), "node.test")
	h := newHarness(t, upstreamEntry(t, "node.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String(), "    rules: small\n"),
		"rule_sets:\n  small:\n    max_body_bytes: 1000")
	req, _ := http.NewRequest("POST", "https://node.test/upload", io.LimitReader(zeros{}, 100_000))
	req.ContentLength = -1 // chunked
	resp, err := h.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "rule_violation") {
		t.Errorf("chunked 100 kB body with a 1000-byte limit: %d %s", resp.StatusCode, body)
	}
	if got.Load() > 1000 {
		t.Errorf("the upstream received %d bytes of it", got.Load())
	}
}

// dialIntercepted opens an intercepted TLS connection to target through sluice.
func dialIntercepted(t *testing.T, h *harness, target string) (net.Conn, *tls.Conn) {
	c, err := net.Dial("tcp", h.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: h.pool(), NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return c, tc
}

// TestMalformedClientRequests: a CONNECT that is not host:port and a body
// whose chunking is broken are the client's fault: 400, never blamed on
// the upstream with a 502.
func TestMalformedClientRequests(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }), "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()))

	c, err := net.Dial("tcp", h.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "CONNECT /x HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	c.Close()
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("CONNECT /x with a Host header: %v %v, want 400", resp, err)
	}

	conn, tc := dialIntercepted(t, h, "api.test:443")
	defer conn.Close()
	fmt.Fprint(tc, "POST /upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a broken chunked body: status %d %s, want 400", resp.StatusCode, body)
	}
}

// TestSlowBodyCutOff: a body that stops sending is cut off after
// timeouts.body_idle with 408, both when it streams to the upstream and
// when the rules read it whole first.
func TestSlowBodyCutOff(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }), "api.test", "node.test")
	caPath := upCA.WritePEM(t, t.TempDir())
	h := newHarness(t, upstreamEntry(t, "api.test", caPath, up.Listener.Addr().String())+
		upstreamEntry(t, "node.test", caPath, up.Listener.Addr().String(), "    rules: json\n"),
		"timeouts: {body_idle: 300ms}", "rule_sets:\n  json:\n    json_max_depth: 8")
	for _, host := range []string{"api.test", "node.test"} {
		conn, tc := dialIntercepted(t, h, host+":443")
		fmt.Fprintf(tc, "POST /slow HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", host)
		tc.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: no answer to a stalled body: %v", host, err)
		}
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("%s: a stalled body got %d, want 408", host, resp.StatusCode)
		}
	}
}
