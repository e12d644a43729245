package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"sluice/internal/blobs"
	"sluice/internal/ca"
	"sluice/internal/dialer"
	"sluice/internal/filter"
	"sluice/internal/proxy"
	"sluice/internal/route"
	"sluice/internal/store"
	"sluice/internal/testenv"
)

// harness runs a proxy.Server on loopback listeners for one test.
type harness struct {
	t         testing.TB
	srv       *proxy.Server
	gw        *route.Gateway
	dialer    *dialer.Dialer
	proxyAddr string
	tlsAddr   string
	// reverseAddr is the reverse listener's, when the config has one.
	reverseAddr string
	// The transparent listeners' addresses (listen.transparent_tls, _http).
	transparentTLSAddr, transparentHTTPAddr string
	bans                                    *filter.Bans
	clients                                 map[string]*http.Client
	root                                    *ca.Root
	dir                                     string
	logs                                    *testenv.Buffer
	// logBytes counts what was logged, also in a benchmark, whose log is not kept.
	logBytes atomic.Int64
	resolver *fakeResolver
	reg      *prometheus.Registry
}

// newHarness starts sluice with the given hosts section (YAML, indented
// under "hosts:") and optional extra top-level YAML; an extra that starts
// with "reverse: " is the reverse listener's entry under listen, and the
// harness serves it on a loopback port of its own (reverseAddr).
func newHarness(t testing.TB, hostsYAML string, extra ...string) *harness {
	t.Helper()
	return newHarnessMeters(t, nil, hostsYAML, extra...)
}

// newHarnessMeters is newHarness with the budgets kept in meters (nil: in memory).
func newHarnessMeters(t testing.TB, meters store.Meters, hostsYAML string, extra ...string) *harness {
	t.Helper()
	dir := t.TempDir()
	reverse := ""
	for i, e := range extra {
		if strings.HasPrefix(e, "reverse: ") {
			reverse, extra[i] = ", "+e, ""
		}
	}
	doc := fmt.Sprintf("listen: {proxy: 127.0.0.1:0, proxy_tls: 127.0.0.1:0, admin: \"off\"%s}\ndata_dir: %s\n%s\nhosts:\n%s\n",
		reverse, dir, strings.Join(extra, "\n"), hostsYAML)
	h := &harness{t: t, dir: dir, logs: &testenv.Buffer{}, resolver: &fakeResolver{hosts: map[string][]netip.Addr{}}, reg: prometheus.NewRegistry()}
	onRefuse, err := dialer.CountRefusals(h.reg)
	if err != nil {
		t.Fatal(err)
	}
	h.dialer = dialer.New(h.resolver, 10*time.Second)
	h.dialer.OnRefuse = onRefuse
	table, err := route.Parse([]byte(doc), "test.yaml", dir, h.dialer)
	if err != nil {
		t.Fatalf("route.Parse:\n%s\nerror: %v", doc, err)
	}
	cfg := table.Config
	root, err := ca.OpenRoot(dir, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	h.root = root
	var logTo io.Writer = io.MultiWriter(h.logs, t.Output(), byteCounter{&h.logBytes})
	var accessLines io.Writer
	if _, ok := t.(*testing.B); ok {
		// A benchmark measures the formatting, not a growing buffer, and
		// writes the access lines as sluice does with log.format json.
		logTo = byteCounter{&h.logBytes}
		accessLines = logTo
	}
	log := slog.New(slog.NewJSONHandler(logTo, &slog.HandlerOptions{Level: slog.LevelInfo}))
	blobStore, err := blobs.Open(filepath.Join(dir, "blobs"), blobs.Options{MaxBytes: 1 << 30, Log: log, Registerer: h.reg})
	if err != nil {
		t.Fatal(err)
	}
	banList, err := store.OpenBans(filepath.Join(dir, "bans.json"), log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(banList.Flush) // before the data dir goes, as sluice does when it stops
	bans, err := filter.NewBans(banList, log, nil, h.reg, 64)
	if err != nil {
		t.Fatal(err)
	}
	h.gw, h.srv, err = route.NewGateway(table, route.Components{Root: root, Log: log, AccessLines: accessLines, Registerer: h.reg,
		Blobs: blobStore, Bans: bans, Meters: meters, Context: t.Context()})
	if err != nil {
		t.Fatal(err)
	}
	h.bans = bans
	lns := proxy.Listeners{Proxy: listenLoopback(t), ProxyTLS: listenLoopback(t), TransparentTLS: []proxy.TransparentListener{{Listener: listenLoopback(t), Port: 443}}, TransparentHTTP: listenLoopback(t)}
	h.proxyAddr, h.tlsAddr = lns.Proxy.Addr().String(), lns.ProxyTLS.Addr().String()
	h.transparentTLSAddr, h.transparentHTTPAddr = lns.TransparentTLS[0].Addr().String(), lns.TransparentHTTP.Addr().String()
	if cfg.Listen.Reverse != nil {
		lns.Reverse = listenLoopback(t)
		h.reverseAddr = lns.Reverse.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.Serve(ctx, lns) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// plainEntry serves handler over plain HTTP on loopback and returns the
// hosts entry of name (plain_http) that reaches it, with extra appended,
// and its address.
func plainEntry(t testing.TB, name string, handler http.Handler, extra ...string) (entry, addr string) {
	ln := listenLoopback(t)
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprintf("  %s:\n    plain_http: true\n    connect_to: %s\n    allow_private: true\n%s", name, ln.Addr(), strings.Join(extra, "")), ln.Addr().String()
}

// pool trusts sluice's CA plus the given extra PEMs.
func (h *harness) pool(extra ...[]byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(h.root.CertPEM)
	for _, e := range extra {
		p.AppendCertsFromPEM(e)
	}
	return p
}

// client returns an HTTP client that uses sluice as its proxy and trusts its CA.
func (h *harness) client(h2 bool) *http.Client {
	tr := &http.Transport{
		Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}),
		TLSClientConfig:   &tls.Config{RootCAs: h.pool()},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// errorBody is the JSON sluice answers its own errors with.
type errorBody struct {
	Error  string `json:"error"`
	Host   string `json:"host"`
	Detail string `json:"detail"`
}

func decodeError(t *testing.T, body []byte) errorBody {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	return e
}

// get does a GET and returns the status and body.
func get(t *testing.T, c *http.Client, rawURL string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return send(t, c, req)
}

// send sends req and returns its response with the whole body read.
func send(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

// connect sends a raw CONNECT and returns the response.
func connect(t *testing.T, proxyAddr, target string) (*http.Response, []byte) {
	t.Helper()
	c, resp := dialConnect(t, proxyAddr, target)
	defer c.Close()
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// dialConnect sends a raw CONNECT on a new connection and reads the
// answer's head; after a 200 the connection is the tunnel.
func dialConnect(t testing.TB, proxyAddr, target string) (net.Conn, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return c, resp
}

// echo is the test upstream: it answers JSON describing the request.
type echoReply struct {
	Method  string      `json:"method"`
	Host    string      `json:"host"`
	Path    string      `json:"path"`
	Query   string      `json:"query"`
	Proto   string      `json:"proto"`
	Body    string      `json:"body"`
	Headers http.Header `json:"headers"`
}

func echoHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "X-Hop")
	w.Header().Set("X-Hop", "must not reach the client")
	json.NewEncoder(w).Encode(echoReply{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Proto, string(body), r.Header})
}

// fakeResolver stands in for DNS for the test's invented names and counts
// every lookup, so tests can prove that a denied host was never resolved.
type fakeResolver struct {
	mu      sync.Mutex
	hosts   map[string][]netip.Addr
	lookups []string
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lookups = append(r.lookups, host)
	if a, ok := r.hosts[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *fakeResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range addrs {
		r.hosts[host] = append(r.hosts[host], netip.MustParseAddr(a))
	}
}

func (r *fakeResolver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lookups)
}

// countingListener accepts TCP connections and counts them.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func newCountingListener(t *testing.T) *countingListener {
	cl := &countingListener{Listener: listenLoopback(t)}
	go func() {
		for {
			c, err := cl.Listener.Accept()
			if err != nil {
				return
			}
			cl.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { cl.Listener.Close() })
	return cl
}

// accessLines returns the access-log lines ("msg":"request") logged so far.
func (h *harness) accessLines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

// waitFor polls cond for up to 5 s; for state that settles after a
// response was already delivered (an access line written after the body).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, what, cond)
}

// metric returns the value of the counter or gauge name with the given
// label name/value pair, or 0 if it has not been set.
func (h *harness) metric(name, label, value string) float64 {
	h.t.Helper()
	if label == "" {
		return h.metricOf(name)
	}
	return h.metricOf(name, label, value)
}

// metricOf returns the value of the series of name whose labels include
// every name/value pair given.
// metricOf is the value of name's first series with the label pairs (a
// histogram's: its count).
func (h *harness) metricOf(name string, pairs ...string) float64 {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(pairs); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] }) {
					continue series
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

type byteCounter struct{ n *atomic.Int64 }

func (c byteCounter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }
