package proxy_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"sluice/internal/testpki"
)

// rapidReset opens an intercepted HTTP/2 connection to target through the
// proxy at proxyAddr and sends n requests for path, each reset right after
// its HEADERS (CVE-2023-44487). It returns how many it sent before sluice
// closed the connection, and whether it did.
func rapidReset(t testing.TB, proxyAddr, target, path string, roots *x509.CertPool, n int, wait time.Duration) (sent int, closed bool) {
	t.Helper()
	c, resp := dialConnect(t, proxyAddr, target)
	defer c.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %s", target, resp.Status)
	}
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: host, NextProtos: []string{"h2"}})
	if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatalf("TLS to %s: %v (ALPN %q)", target, err, tc.ConnectionState().NegotiatedProtocol)
	}
	// Read (and discard) what sluice sends, so that its writes never block
	// and a close is seen.
	done := make(chan struct{})
	go func() {
		defer close(done)
		fr := http2.NewFramer(io.Discard, tc)
		for {
			if _, err := fr.ReadFrame(); err != nil {
				return
			}
		}
	}()
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, nil)
	fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := range n {
		block.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", host}, {":path", path}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := uint32(2*i + 1)
		err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
		if err == nil {
			err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		if err != nil {
			return i, true
		}
		select {
		case <-done:
			return i + 1, true
		default:
		}
	}
	select {
	case <-done:
		return n, true
	case <-time.After(wait):
		return n, false
	}
}

// TestRapidResetIsSummarised: an HTTP/2 client that resets every stream it
// opens gets its connection closed, writes a bounded number of log lines
// (a summary, not a line per stream), is counted in a metric, and does not
// make sluice dial the upstream again for each stream it reset.
func TestRapidResetIsSummarised(t *testing.T) {
	h, upConns, upRequests, upActive := rapidResetHarness(t)

	const streams = 2000
	before := len(h.logs.String())
	sent, closed := rapidReset(t, h.proxyAddr, "api.test:443", "/api/v3/order", h.pool(), streams, 2*time.Second)
	if !closed {
		t.Errorf("sluice kept a connection open after %d reset streams", sent)
	}
	// Whichever closes the flood first, sluice's limit (more than 100 resets
	// counted) or Go's HTTP/2 server (too many streams queued behind the
	// 100 in flight), the connection's end is one summary line.
	waitFor(t, "the connection's summary line", func() bool {
		logged := h.logs.String()[before:]
		return strings.Contains(logged, "reset streams too fast") || strings.Contains(logged, "ended after it reset streams")
	})
	logged := h.logs.String()[before:]
	lines := strings.Count(logged, "\n")
	resets := h.metric("sluice_client_stream_resets_total", "", "")
	t.Logf("%d streams sent and reset, %d log lines (%d bytes), %.0f resets counted, %d upstream connections for %d upstream requests",
		sent, lines, len(logged), resets, upConns.Load(), upRequests.Load())
	if lines > 10 {
		t.Errorf("%d reset streams wrote %d log lines, want a few and a summary (<= 10)", sent, lines)
	}
	if resets < 100 {
		t.Errorf("sluice_client_stream_resets_total = %.0f after %d reset streams, want them counted", resets, sent)
	}
	// At most one upstream request per stream in flight (100 per client
	// connection), each on a connection of its own at worst; never one
	// connection per reset stream.
	if n := upConns.Load(); n > 200 {
		t.Errorf("%d reset streams made sluice open %d upstream connections, want at most 200", sent, n)
	}
	// The flood's upstream connections went back to the pool: a
	// well-behaved client on another connection reuses them.
	waitFor(t, "the abandoned upstream requests to finish", func() bool { return upActive.Load() == 0 })
	dialed := upConns.Load()
	c := h.client(true)
	for range 5 {
		resp, body := get(t, c, "https://api.test/api/v3/order")
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Errorf("a normal HTTP/2 request after the flood: %d %s", resp.StatusCode, body)
		}
	}
	// A flood reset fast enough reaches no upstream at all: then the first
	// request dials one connection and the other four reuse it.
	want := int64(0)
	if dialed == 0 {
		want = 1
	}
	if n := upConns.Load() - dialed; n != want {
		t.Errorf("5 requests after a flood that dialed %d upstream connections dialed %d new ones, want %d (the pool's reused)", dialed, n, want)
	}
}

// rapidResetHarness is sluice in front of an HTTP/1.1 upstream (where a
// cancelled request costs its connection) that counts its connections,
// its requests and its connections busy with one (a request read, its
// answer not yet written whole).
func rapidResetHarness(t testing.TB) (h *harness, upConns, upRequests, upActive *atomic.Int64) {
	upCA := testpki.NewCA(t, "upstream CA")
	upConns, upRequests, upActive = new(atomic.Int64), new(atomic.Int64), new(atomic.Int64)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upRequests.Add(1)
		time.Sleep(5 * time.Millisecond) // in flight when the reset arrives
		io.WriteString(w, "ok")
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{upCA.Leaf(t, "api.test")}}
	var mu sync.Mutex
	active := map[net.Conn]bool{}
	up.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		if s == http.StateNew {
			upConns.Add(1)
		}
		if was := active[c]; was != (s == http.StateActive) {
			active[c] = !was
			upActive.Add(map[bool]int64{true: -1, false: 1}[was])
		}
	}
	up.StartTLS() // HTTP/1.1 upstream: a cancelled request there costs its connection
	t.Cleanup(up.Close)
	return newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String())), upConns, upRequests, upActive
}

// BenchmarkRapidReset: one op is one client connection that opens and
// resets 2000 streams, as fast as it can, then hangs up unless sluice did
// first: an attacker that reconnects at once. log-B/op is what sluice
// logged for it (log bytes per second = log-B/op / ns/op * 1e9).
func BenchmarkRapidReset(b *testing.B) {
	h, _, _, _ := rapidResetHarness(b)
	pool := h.pool()
	logged := h.logBytes.Load()
	for b.Loop() {
		rapidReset(b, h.proxyAddr, "api.test:443", "/api/v3/order", pool, 2000, 0)
	}
	b.StopTimer()
	time.Sleep(time.Second) // the last connection's summary line
	b.ReportMetric(float64(h.logBytes.Load()-logged)/float64(b.N), "log-B/op")
}
