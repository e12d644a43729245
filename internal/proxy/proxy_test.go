package proxy_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"sluice/internal/route"
	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// upstreamEntry returns a hosts entry that intercepts name and reaches the
// test upstream srv, trusting the upstream's own CA.
func upstreamEntry(_ testing.TB, name, caPath, addr string, extra ...string) string {
	return fmt.Sprintf("  %s:\n    upstream_ca: %s\n    connect_to: %s\n    allow_private: true\n%s", name, caPath, addr,
		strings.Join(extra, ""))
}

func TestIntercept(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	caPath := upCA.WritePEM(t, t.TempDir())
	h := newHarness(t, upstreamEntry(t, "api.test", caPath, up.Listener.Addr().String()))

	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			c := h.client(h2)
			resp, body := get(t, c, "https://api.test/api/v3/ticker?symbol=BTCUSDT")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET: status %d, body %s", resp.StatusCode, body)
			}
			if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want {
				t.Errorf("client<->sluice protocol = %s, want HTTP/%d", resp.Proto, want)
			}
			if got := resp.TLS.PeerCertificates[0]; got.Issuer.CommonName == upCA.Cert.Subject.CommonName || len(got.DNSNames) != 1 || got.DNSNames[0] != "api.test" {
				t.Errorf("client saw certificate issued by %q for %v, want sluice's leaf for exactly [api.test]", got.Issuer.CommonName, got.DNSNames)
			}
			var e echoReply
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatal(err)
			}
			if e.Host != "api.test" || e.Path != "/api/v3/ticker" || e.Query != "symbol=BTCUSDT" {
				t.Errorf("upstream saw host %q path %q query %q", e.Host, e.Path, e.Query)
			}
			if e.Proto != "HTTP/2.0" {
				t.Errorf("sluice->upstream protocol = %s, want HTTP/2.0 (the upstream offers h2)", e.Proto)
			}

			req, _ := http.NewRequest(http.MethodPost, "https://api.test/api/v3/order", strings.NewReader(`{"side":"BUY"}`))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			json.Unmarshal(body, &e)
			if resp.StatusCode != http.StatusOK || e.Method != "POST" || e.Body != `{"side":"BUY"}` {
				t.Errorf("POST: status %d, upstream saw %s with body %q", resp.StatusCode, e.Method, e.Body)
			}
		})
	}
}

func TestTunnelKeepsUpstreamCertificate(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "git.test")
	h := newHarness(t, fmt.Sprintf("  git.test: {mode: tunnel, connect_to: %s, allow_private: true}", up.Listener.Addr()))
	c := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: upCA.Pool()}, // trusts only the upstream's CA
	}}
	resp, body := get(t, c, "https://git.test/repo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if got := resp.TLS.PeerCertificates[0].Issuer.CommonName; got != "upstream CA" {
		t.Errorf("tunnelled client saw a certificate issued by %q, want the upstream's own", got)
	}
	c.CloseIdleConnections()
	waitFor(t, "the tunnel's access line", func() bool {
		for _, l := range h.accessLines() {
			if l["decision"] == "tunnel" && l["bytes_out"].(float64) > 0 && l["bytes_in"].(float64) > 0 {
				return true
			}
		}
		return false
	})
}

func TestDeniedHostsAreNeverResolvedOrDialed(t *testing.T) {
	trap := newCountingListener(t) // every denied entry "connects" here
	upCA := testpki.NewCA(t, "upstream CA")
	h := newHarness(t, fmt.Sprintf(`  blocked.test: {mode: deny, connect_to: %[1]s, allow_private: true}
  api.test: {connect_to: %[1]s, allow_private: true, upstream_ca: %[2]s}
  plain.test: {connect_to: %[1]s, allow_private: true}`, trap.Addr(), upCA.WritePEM(t, t.TempDir())))

	for _, tt := range []struct {
		name, target, wantFix string
		plain                 bool
	}{
		{"unlisted host", "evil.test:443", `add "evil.test" to hosts`, false},
		{"deny entry", "blocked.test:443", `hosts."blocked.test".mode`, false},
		{"wrong port", "api.test:8443", `add 8443 to hosts."api.test".ports`, false},
		{"metadata IP", "169.254.169.254:443", `add "169.254.169.254" to hosts`, false},
		{"plain http, unlisted", "evil.test", `add "evil.test" to hosts`, true},
		{"plain http not allowed", "plain.test", `set hosts."plain.test".plain_http: true`, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var status int
			var body []byte
			if tt.plain {
				resp, b := get(t, &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr})}}, "http://"+tt.target+"/x")
				status, body = resp.StatusCode, b
			} else {
				resp, b := connect(t, h.proxyAddr, tt.target)
				status, body = resp.StatusCode, b
				// Clients print the status line of a refused CONNECT, not its body.
				if !strings.HasPrefix(resp.Status, "403 sluice: ") || !strings.Contains(resp.Status, tt.wantFix) {
					t.Errorf("status line %q, want it to say why and name %q", resp.Status, tt.wantFix)
				}
			}
			if status != http.StatusForbidden {
				t.Fatalf("status %d, want 403; body %s", status, body)
			}
			e := decodeError(t, body)
			if !strings.Contains(e.Detail, tt.wantFix) || e.Host == "" {
				t.Errorf("error %+v: want host set and detail naming %q", e, tt.wantFix)
			}
		})
	}
	if n := h.resolver.count(); n != 0 {
		t.Errorf("denied targets caused %d DNS lookups (%v), want 0", n, h.resolver.lookups)
	}
	if n := trap.accepted.Load(); n != 0 {
		t.Errorf("denied targets caused %d upstream connections, want 0", n)
	}
}

func TestHostMismatchIsMisdirected(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test", "other.test")
	caPath := upCA.WritePEM(t, t.TempDir())
	addr := up.Listener.Addr().String()
	h := newHarness(t, upstreamEntry(t, "api.test", caPath, addr)+"\n"+upstreamEntry(t, "other.test", caPath, addr))
	for _, h2 := range []bool{false, true} {
		req, _ := http.NewRequest(http.MethodGet, "https://api.test/x", nil)
		req.Host = "other.test" // allowed too, but not what this tunnel was opened for
		resp, err := h.client(h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("h2=%v: Host other.test inside CONNECT api.test: status %d, want 421; body %s", h2, resp.StatusCode, body)
		}
	}
}

func TestSNIMustMatchConnectTarget(t *testing.T) {
	h := newHarness(t, "  api.test: {}\n  other.test: {}")
	c, err := net.Dial("tcp", h.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
	buf := make([]byte, len("HTTP/1.1 200 Connection established\r\n\r\n"))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "other.test", RootCAs: h.pool()})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake with SNI other.test inside CONNECT api.test succeeded; want it refused")
	}
}

func TestUpstreamFailures(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	otherCA := testpki.NewCA(t, "some other CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	wrongName := upCA.Upstream(t, http.HandlerFunc(echoHandler), "not-api.test")
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	slow := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}), "slow.test")
	closed := listenLoopback(t)
	closedAddr := closed.Addr().String()
	closed.Close() // nothing listens here: connection refused
	upCAPath := upCA.WritePEM(t, t.TempDir())
	h := newHarness(t, strings.Join([]string{
		upstreamEntry(t, "untrusted.test", otherCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()),
		upstreamEntry(t, "api.test", upCAPath, wrongName.Listener.Addr().String()),
		upstreamEntry(t, "refused.test", upCAPath, closedAddr),
		upstreamEntry(t, "slow.test", upCAPath, slow.Listener.Addr().String()),
		"  private.test: {}",
		fmt.Sprintf("  privtunnel.test: {mode: tunnel, connect_to: %s}", up.Listener.Addr()),
	}, "\n"), "timeouts: {response_header: 300ms}")
	h.resolver.set("private.test", "10.1.2.3", "127.0.0.1")

	for _, tt := range []struct {
		name, url  string
		status     int
		msg, proxy string
	}{
		{"untrusted certificate", "https://untrusted.test/", 502, "upstream certificate not trusted", "tls_certificate_error"},
		{"certificate for another name", "https://api.test/", 502, "upstream certificate not trusted", "tls_certificate_error"},
		{"connection refused", "https://refused.test/", 502, "upstream refused the connection", "connection_refused"},
		{"response timeout", "https://slow.test/", 504, "upstream timed out", "http_response_timeout"},
		{"resolves to private addresses", "https://private.test/", 403, "upstream address not allowed", "destination_ip_prohibited"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, h.client(false), tt.url)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tt.status, body)
			}
			e := decodeError(t, body)
			u, _ := url.Parse(tt.url)
			if e.Error != tt.msg || !strings.Contains(e.Host, u.Hostname()) || e.Detail == "" {
				t.Errorf("error %+v, want error %q naming host %s with a detail", e, tt.msg, u.Hostname())
			}
			// The two a setting fixes name the entry's key.
			key := map[string]string{"tls_certificate_error": "upstream_ca", "destination_ip_prohibited": "allow_private"}[tt.proxy]
			if key != "" && !strings.Contains(e.Detail, fmt.Sprintf("hosts.%q.%s", u.Hostname(), key)) {
				t.Errorf("detail %q does not name hosts.%q.%s", e.Detail, u.Hostname(), key)
			}
			if ps := resp.Header.Get("Proxy-Status"); !strings.Contains(ps, "error="+tt.proxy) {
				t.Errorf("Proxy-Status %q, want error=%s", ps, tt.proxy)
			}
		})
	}
	t.Run("tunnel to loopback without allow_private", func(t *testing.T) {
		resp, body := connect(t, h.proxyAddr, "privtunnel.test:443")
		if resp.StatusCode != http.StatusForbidden || decodeError(t, body).Error != "upstream address not allowed" {
			t.Errorf("status %d body %s, want 403 upstream address not allowed", resp.StatusCode, body)
		}
		if !strings.Contains(resp.Status, `hosts."privtunnel.test".allow_private`) {
			t.Errorf("CONNECT status line %q does not name hosts.\"privtunnel.test\".allow_private", resp.Status)
		}
	})
	if got := h.metric("sluice_dialer_refused_addresses_total", "class", "loopback"); got < 1 {
		t.Errorf("refused loopback addresses metric = %v, want >= 1", got)
	}
}

func TestPlainHTTPForward(t *testing.T) {
	up := newPlainUpstream(t)
	h := newHarness(t, fmt.Sprintf("  mirror.test: {plain_http: true, connect_to: %s, allow_private: true}", up))
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr})}}
	req, _ := http.NewRequest(http.MethodGet, "http://mirror.test/debian/dists/stable/Release", nil)
	req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
	req.Header.Set("Connection", "X-Secret-Hop")
	req.Header.Set("X-Secret-Hop", "1")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e echoReply
	json.Unmarshal(body, &e)
	if resp.StatusCode != 200 || e.Host != "mirror.test" || e.Path != "/debian/dists/stable/Release" {
		t.Fatalf("status %d, upstream saw host %q path %q", resp.StatusCode, e.Host, e.Path)
	}
	if e.Headers.Get("Proxy-Authorization") != "" || e.Headers.Get("X-Secret-Hop") != "" {
		t.Errorf("hop-by-hop request headers reached the upstream: %v", e.Headers)
	}
	if resp.Header.Get("X-Hop") != "" {
		t.Errorf("hop-by-hop response header X-Hop (named in Connection) reached the client")
	}
}

func newPlainUpstream(t *testing.T) string {
	ln := listenLoopback(t)
	srv := &http.Server{Handler: http.HandlerFunc(echoHandler)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestHTTPSProxyListener(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()))
	c := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "https", Host: h.tlsAddr}),
		TLSClientConfig: &tls.Config{RootCAs: h.pool()},
	}}
	resp, body := get(t, c, "https://api.test/ping")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("through the HTTPS proxy listener: status %d body %s", resp.StatusCode, body)
	}
}

func TestLogsKeepSecretsOut(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()))
	req, _ := http.NewRequest(http.MethodGet, "https://api.test/api/v3/account?timestamp=1&signature=SECRET1&apiKey=SECRET2", nil)
	req.Header.Set("Authorization", "Bearer SECRET3")
	req.Header.Set("X-MBX-APIKEY", "SECRET4")
	req.Header.Set("Cookie", "session=SECRET5")
	resp, err := h.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	waitFor(t, "the access line", func() bool { return strings.Contains(h.logs.String(), `"path":"/api/v3/account"`) })
	if logs := h.logs.String(); strings.Contains(logs, "SECRET") || strings.Contains(logs, "timestamp=") {
		t.Errorf("logs contain a secret or a query string:\n%s", logs)
	}
	var line map[string]any
	for _, l := range h.accessLines() {
		if l["mode"] == "intercept" {
			line = l
		}
	}
	for _, key := range []string{"client_ip", "mode", "method", "host", "path", "decision", "status", "bytes_in", "bytes_out", "duration", "upstream_addr"} {
		if _, ok := line[key]; !ok {
			t.Errorf("access line %v lacks %q", line, key)
		}
	}
}

// TestLargeBodiesStreamWithBoundedMemory moves 256 MiB each way through an
// intercepted connection and checks that the heap never grows by more than
// a small fraction of that: bodies are streamed, never buffered whole.
func TestLargeBodiesStreamWithBoundedMemory(t *testing.T) {
	const size = 256 << 20
	chunk := make([]byte, 64<<10)
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			n, err := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%d %v", n, err)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}), "blob.test")
	h := newHarness(t, upstreamEntry(t, "blob.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()))

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
		}
	}()

	c := h.client(false)
	resp, err := c.Get("https://blob.test/big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, err %v; want %d", n, err, size)
	}
	req, _ := http.NewRequest(http.MethodPut, "https://blob.test/upload", io.LimitReader(zeros{}, size))
	req.ContentLength = -1 // chunked: sluice cannot know the size in advance
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("%d <nil>", size); string(body) != want {
		t.Fatalf("upload: upstream read %q, want %q", body, want)
	}
	close(stop)
	<-sampled
	if growth := int64(peak) - int64(base.HeapInuse); growth > 64<<20 {
		t.Errorf("heap grew by %d MiB while moving 2x%d MiB; bodies must stream", growth>>20, size>>20)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestCurlThroughSluice(t *testing.T) {
	curl := testenv.RequireTool(t, "curl")
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()))
	caFile := h.dir + "/ca.pem"
	out, err := exec.Command(curl, "-sS", "--fail-with-body", "--http2", "-x", "http://"+h.proxyAddr, "--cacert", caFile,
		"-H", "X-Test: curl", "https://api.test/api/v3/time").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	var e echoReply
	if err := json.Unmarshal(out, &e); err != nil || e.Path != "/api/v3/time" || e.Headers.Get("X-Test") != "curl" {
		t.Errorf("curl got %s (err %v)", out, err)
	}
	out, err = exec.Command(curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", "http://"+h.proxyAddr, "--cacert", caFile,
		"https://denied.test/").CombinedOutput()
	if !strings.Contains(string(out), "403") && !strings.Contains(string(out), "CONNECT tunnel failed, response 403") {
		t.Errorf("curl to a denied host: %s (err %v), want a 403 on CONNECT", out, err)
	}
}

// TestPolicyRecheckedPerRequest: a reload that removes a host refuses the
// next request on an already intercepted keep-alive connection.
func TestPolicyRecheckedPerRequest(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test")
	entry := upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String())
	h := newHarness(t, entry+"  other.test: {}\n")
	c := h.client(false)
	if resp, body := get(t, c, "https://api.test/a"); resp.StatusCode != 200 {
		t.Fatalf("before reload: status %d %s", resp.StatusCode, body)
	}
	table, err := route.Parse([]byte("hosts:\n  other.test: {}\n"), "reload.yaml", h.dir, h.dialer)
	if err != nil {
		t.Fatal(err)
	}
	h.gw.Install(table)
	// The client's own account of its connection, not the CONNECT access
	// line: that one is written when the CONNECT handler returns, which may
	// be after both requests were answered.
	var reused bool
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodGet, "https://api.test/b", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := send(t, c, req)
	if resp.StatusCode != http.StatusForbidden || decodeError(t, body).Error != "host not listed" {
		t.Errorf("after the host was removed: status %d %s, want 403 host not listed", resp.StatusCode, body)
	}
	if !reused {
		t.Error("the client opened a second CONNECT, want the one keep-alive intercepted connection reused")
	}
}
