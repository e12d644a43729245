package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"sluice/internal/store"
	"sluice/internal/store/redisstore"
	"sluice/internal/testpki"
	"sluice/internal/testredis"
)

// BenchmarkGET compares a keep-alive GET straight to a TLS upstream with
// the same GET intercepted by sluice, forwarded and answered from the
// cache (the binance profile caches the ticker for 5 s), through CONNECT
// and through the transparent listener; the ratios are sluice's
// per-request overhead.
func BenchmarkGET(b *testing.B) {
	body := []byte(`{"symbol":"BTCUSDT","price":"65745.70396954"}`)
	upCA := testpki.NewCA(b, "upstream CA")
	up := upCA.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }), "api.test", "api.binance.com")
	caPath := upCA.WritePEM(b, b.TempDir())
	h := newHarness(b, upstreamEntry(nil, "api.test", caPath, up.Listener.Addr().String())+
		upstreamEntry(nil, "api.binance.com", caPath, up.Listener.Addr().String(), "    profile: binance\n"))
	upAddr := up.Listener.Addr().String()
	direct := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: upCA.Pool()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, upAddr)
		},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	// The same over a new connection each time: a TLS handshake (and for
	// sluice a CONNECT) per request, what bots that do not keep
	// connections alive cost.
	newConn := func(c *http.Client) *http.Client {
		t := c.Transport.(*http.Transport).Clone()
		t.DisableKeepAlives = true
		return &http.Client{Transport: t}
	}
	transparent := transparentClient(h, &tls.Config{RootCAs: h.pool()})
	for _, bc := range []struct {
		name, host string
		c          *http.Client
	}{{"direct", "api.test", direct}, {"intercepted", "api.test", h.client(false)}, {"cache_hit", "api.binance.com", h.client(false)},
		{"direct_newconn", "api.test", newConn(direct)}, {"cache_hit_newconn", "api.binance.com", newConn(h.client(false))},
		// The same through the transparent listener: no CONNECT, the target from the SNI.
		{"transparent_cache_hit", "api.binance.com", transparent},
		{"transparent_cache_hit_newconn", "api.binance.com", newConn(transparent)}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				getOK(b, bc.c, "https://"+bc.host+"/api/v3/ticker/price?symbol=BTCUSDT")
			}
		})
	}
}

// BenchmarkThrottledGET: an intercepted GET that spends an upstream budget
// (cache off, a window of a billion per minute, so nothing waits), the
// budget in this process or shared in Redis on loopback (a fleet member's);
// p50 and p99 are the whole request's.
func BenchmarkThrottledGET(b *testing.B) {
	upCA := testpki.NewCA(b, "upstream CA")
	up := upCA.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.test")
	caPath := upCA.WritePEM(b, b.TempDir())
	entry := upstreamEntry(nil, "api.test", caPath, up.Listener.Addr().String(),
		"    cache: \"off\"\n    throttle: {model: window, limit: 1000000000, window: 1m, budget: bench}\n")
	rdb := testredis.Start(b).Client()
	for _, bc := range []struct {
		name   string
		meters store.Meters
	}{{"memory", nil}, {"redis", redisstore.NewMeters(rdb, "bench:")}} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHarnessMeters(b, bc.meters, entry)
			c := h.client(false)
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				getOK(b, c, "https://api.test/api/v3/order")
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// getOK GETs u, reads the body and fails b unless the answer is 200.
func getOK(b *testing.B, c *http.Client, u string) {
	resp, err := c.Get(u)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkNewConnections is the load harness's scenario c in one process:
// 16 clients that open a new connection (and full TLS handshake) for every
// request, as botload -newconn does, offering X25519 and P-256 as OpenSSL
// bots do, against a bare Go TLS server with an ECDSA certificate and
// through sluice (CONNECT, intercepted, answered from the cache). ns/op is
// the inverse of the rate; cpu-µs/op is the process's CPU (clients and
// server) per request.
func BenchmarkNewConnections(b *testing.B) { benchBots(b, 16, true) }

// BenchmarkKeepAliveHits is scenario b in one process: 64 clients, each on
// its own keep-alive connection, against the same two servers.
func BenchmarkKeepAliveHits(b *testing.B) { benchBots(b, 64, false) }

// benchBots runs clients bots, as botload does, against a bare Go TLS
// server with an ECDSA certificate and through sluice (CONNECT, intercepted,
// answered from the cache), each request on a new connection or all on
// keep-alive ones.
func benchBots(b *testing.B, clients int, newConn bool) {
	body := []byte(`{"symbol":"BTCUSDT","price":"65745.70396954"}`)
	upCA := testpki.NewCA(b, "upstream CA")
	up := upCA.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }), "api.binance.com")
	caPath := upCA.WritePEM(b, b.TempDir())
	h := newHarness(b, upstreamEntry(nil, "api.binance.com", caPath, up.Listener.Addr().String(), "    profile: binance\n"))
	botTLS := func(roots *x509.CertPool) *tls.Config {
		return &tls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	}
	upAddr := up.Listener.Addr().String()
	bare := &http.Transport{TLSClientConfig: botTLS(upCA.Pool()),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, upAddr)
		}}
	proxied := &http.Transport{TLSClientConfig: botTLS(h.pool()),
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr})}
	for _, bc := range []struct {
		name string
		tr   *http.Transport
	}{{"bare_ecdsa", bare}, {"sluice", proxied}} {
		b.Run(bc.name, func(b *testing.B) {
			bc.tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			bc.tr.DisableKeepAlives = newConn
			bc.tr.MaxIdleConnsPerHost = clients
			c := &http.Client{Transport: bc.tr}
			b.SetParallelism(clients / runtime.GOMAXPROCS(0))
			start := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					// b.Fatal may not be called here, off the benchmark's goroutine.
					resp, err := c.Get("https://api.binance.com/api/v3/ticker/price?symbol=BTCUSDT")
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64((processCPU()-start).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// processCPU is the user and system CPU this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
