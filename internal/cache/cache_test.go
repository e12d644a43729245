package cache

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"sluice/internal/config"
	"sluice/internal/testenv"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// origin is a real HTTP upstream that counts requests; next reaches it
// through httputil.ReverseProxy, as sluice's forwarder does.
type origin struct {
	srv   *httptest.Server
	hits  atomic.Int64
	next  http.Handler
	reply atomic.Pointer[func(w http.ResponseWriter, r *http.Request)]
}

func newOrigin(t *testing.T, reply func(w http.ResponseWriter, r *http.Request)) *origin {
	o := &origin{}
	o.reply.Store(&reply)
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.hits.Add(1)
		(*o.reply.Load())(w, r)
	}))
	t.Cleanup(o.srv.Close)
	u, _ := url.Parse(o.srv.URL)
	o.next = &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: &http.Transport{DisableCompression: true}, // as sluice's: encodings pass through
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, `{"error":"upstream refused the connection","detail":%q}`, err.Error())
		},
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug),
	}
	return o
}

func (o *origin) set(reply func(w http.ResponseWriter, r *http.Request)) { o.reply.Store(&reply) }

func newCache(t *testing.T, clk *clock, maxBytes int64) *Cache {
	t.Helper()
	c, err := New(Options{MaxBytes: maxBytes, MaxObjectBytes: 1 << 20, FetchTimeout: 10 * time.Second,
		Now: clk.now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rulesOf(t *testing.T, mode config.CacheMode, stale time.Duration, yamlRules string) *Rules {
	t.Helper()
	var rs []config.CacheRule
	if yamlRules != "" {
		cfg, err := config.Parse([]byte("hosts:\n  a.test:\n    cache:\n      rules:\n"+yamlRules), "t.yaml", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		rs = cfg.Hosts["a.test"].Cache.Rules
	}
	r, err := Compile(mode, rs, stale)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const tickerRules = `        - {path: /api/v3/ticker, ttl: 5s}
        - {path: /api/v3/historicalTrades, ttl: 5s, public: true}
        - {path: /big, ttl: 5s}
`

func do(c *Cache, rules *Rules, next http.Handler, method, target string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "https://a.test"+target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	c.Handle(w, r, "a.test:443", rules, next)
	return w
}

func TestKey(t *testing.T) {
	for _, tt := range []struct{ name, a, b string }{
		{"parameter order", "/k?symbol=X&interval=1m", "/k?interval=1m&symbol=X"},
		{"encoding", "/k?symbol=BTC%2FUSDT", "/k?symbol=BTC/USDT"},
		{"ignored parameter", "/k?symbol=X&timestamp=1", "/k?timestamp=2&symbol=X"},
		{"empty pairs", "/k?&symbol=X&", "/k?symbol=X"},
	} {
		ua, _ := url.Parse(tt.a)
		ub, _ := url.Parse(tt.b)
		if ka, kb := Key("GET", "h:443", ua, []string{"timestamp"}, "gzip"), Key("HEAD", "h:443", ub, []string{"timestamp"}, "gzip"); ka != kb {
			t.Errorf("%s: Key(%s) = %q, Key(HEAD %s) = %q, want equal", tt.name, tt.a, ka, tt.b, kb)
		}
	}
	for _, tt := range []struct{ name, a, b string }{
		{"different value", "/k?symbol=X", "/k?symbol=Y"},
		{"repeated parameter order kept", "/k?s=1&s=2", "/k?s=2&s=1"},
		{"different path", "/k?symbol=X", "/k2?symbol=X"},
	} {
		ua, _ := url.Parse(tt.a)
		ub, _ := url.Parse(tt.b)
		if Key("GET", "h:443", ua, nil, "identity") == Key("GET", "h:443", ub, nil, "identity") {
			t.Errorf("%s: %s and %s share a key", tt.name, tt.a, tt.b)
		}
	}
	u, _ := url.Parse("/k?symbol=X")
	if Key("GET", "h:443", u, nil, "gzip") == Key("GET", "h:443", u, nil, "identity") {
		t.Error("answers for different content codings share a key")
	}
}

// TestAcceptedCodings: the key's codings are the ones a client accepts
// (a weight of 0 refuses one, any other accepts it), in one order,
// however the header spells them.
func TestAcceptedCodings(t *testing.T) {
	for _, tt := range []struct {
		values []string
		want   string
	}{
		{nil, "identity"},
		{[]string{""}, "identity"},
		{[]string{"gzip"}, "gzip"},
		{[]string{"gzip, deflate, br"}, "br,deflate,gzip"},
		{[]string{"br", "GZIP"}, "br,gzip"},
		{[]string{"gzip;q=0.5, zstd ; q=1"}, "gzip,zstd"},
		{[]string{"gzip;q=0"}, "identity"},
		{[]string{"gzip; q=0.000, br"}, "br"},
		{[]string{"gzip;q=0, gzip"}, "identity"}, // the first mention decides
		{[]string{"compress, identity, *"}, "identity"},
		{[]string{"x-gzip"}, "identity"},
	} {
		h := http.Header{}
		for _, v := range tt.values {
			h.Add("Accept-Encoding", v)
		}
		if got := acceptedCodings(h); got != tt.want {
			t.Errorf("acceptedCodings(%q) = %q, want %q", tt.values, got, tt.want)
		}
	}
}

// FuzzKey: shuffling the parameters never changes the key, and the key
// names the host and path it was built from.
func FuzzKey(f *testing.F) {
	f.Add("/api/v3/klines", "symbol=BTCUSDT&interval=1m&limit=500")
	f.Add("/x", "a=1&a=2&b=%20")
	f.Add("/", "&&=&%zz")
	f.Fuzz(func(t *testing.T, path, query string) {
		u := &url.URL{Path: path, RawQuery: query}
		parts := strings.Split(query, "&")
		names := map[string]bool{}
		for _, p := range parts {
			k, _, _ := strings.Cut(p, "=")
			if dk, err := url.QueryUnescape(k); err == nil {
				k = dk
			}
			if names[k] && p != "" {
				return // the order of a repeated parameter's values is kept, on purpose
			}
			names[k] = true
		}
		slices.Reverse(parts)
		rev := &url.URL{Path: path, RawQuery: strings.Join(parts, "&")}
		k1, k2 := Key("GET", "h:443", u, nil, "identity"), Key("GET", "h:443", rev, nil, "identity")
		if k1 != k2 {
			t.Fatalf("Key(%q) = %q but reversed %q", query, k1, k2)
		}
		if !strings.HasPrefix(k1, "GET h:443"+u.EscapedPath()) {
			t.Fatalf("Key %q does not start with the method, host and path", k1)
		}
	})
}

func TestCoalescing(t *testing.T) {
	const n = 200
	arrived := make(chan struct{})
	var once sync.Once
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		<-arrived // hold the one fetch until every client is waiting
		io.WriteString(w, `{"price":"1"}`)
	})
	clk := &clock{t: time.Now()}
	c := newCache(t, clk, 1<<20)
	rules := rulesOf(t, config.CacheRules, time.Minute, tickerRules)
	var wg sync.WaitGroup
	bodies := make([]string, n)
	for i := range n {
		wg.Go(func() { bodies[i] = do(c, rules, o.next, "GET", "/api/v3/ticker/price?symbol=X").Body.String() })
	}
	for range 500 {
		if testutil.ToFloat64(c.coalesced) == n-1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	once.Do(func() { close(arrived) })
	wg.Wait()
	if got := o.hits.Load(); got != 1 {
		t.Errorf("%d concurrent requests for one cold key made %d upstream requests, want 1", n, got)
	}
	for i, b := range bodies {
		if b != `{"price":"1"}` {
			t.Fatalf("client %d got %q", i, b)
		}
	}
}

func TestWaiterLeavingDoesNotCancelFetch(t *testing.T) {
	release := make(chan struct{})
	var upstreamCanceled atomic.Bool
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		if r.Context().Err() != nil {
			upstreamCanceled.Store(true)
		}
		io.WriteString(w, "fresh")
	})
	c := newCache(t, &clock{t: time.Now()}, 1<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	ctx, cancel := context.WithCancel(context.Background())
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		r := httptest.NewRequest("GET", "https://a.test/api/v3/ticker", nil).WithContext(ctx)
		c.Handle(httptest.NewRecorder(), r, "a.test:443", rules, o.next)
	}()
	testenv.WaitFor(t, 10*time.Second, "the leader's fill upstream", func() bool { return o.hits.Load() > 0 })
	second := make(chan string)
	go func() { second <- do(c, rules, o.next, "GET", "/api/v3/ticker").Body.String() }()
	testenv.WaitFor(t, 10*time.Second, "the second request coalesced", func() bool { return testutil.ToFloat64(c.coalesced) > 0 })
	cancel() // the leader's client disconnects
	<-leaderDone
	close(release)
	if got := <-second; got != "fresh" {
		t.Errorf("waiter got %q after the leader left, want the fetched response", got)
	}
	if upstreamCanceled.Load() || o.hits.Load() != 1 {
		t.Errorf("upstream request canceled=%v, upstream hits=%d; want one uncanceled fetch", upstreamCanceled.Load(), o.hits.Load())
	}
}

func TestTTLAndHeaders(t *testing.T) {
	n := 0
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		n++
		w.Header().Set("Set-Cookie", "session=abc")
		fmt.Fprintf(w, "v%d", n)
	})
	clk := &clock{t: time.Now()}
	c := newCache(t, clk, 1<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)

	w := do(c, rules, o.next, "GET", "/api/v3/ticker?symbol=X")
	sent := w.Result().Header // as written at WriteHeader: later changes never reach the client
	if w.Body.String() != "v1" || sent.Get("X-Cache") != "MISS" || sent.Get("Set-Cookie") == "" {
		t.Errorf("first: %q X-Cache %q Set-Cookie %q; want v1, MISS, the cookie for the fetching client", w.Body, sent.Get("X-Cache"), sent.Get("Set-Cookie"))
	}
	clk.advance(3 * time.Second)
	w = do(c, rules, o.next, "GET", "/api/v3/ticker?symbol=X")
	if w.Body.String() != "v1" || w.Header().Get("X-Cache") != "HIT" || w.Header().Get("Age") != "3" {
		t.Errorf("within TTL: %q X-Cache %q Age %q; want v1, HIT, 3", w.Body, w.Header().Get("X-Cache"), w.Header().Get("Age"))
	}
	if w.Header().Get("Set-Cookie") != "" {
		t.Error("a cached Set-Cookie was replayed to another client")
	}
	w = do(c, rules, o.next, "HEAD", "/api/v3/ticker?symbol=X")
	if w.Header().Get("X-Cache") != "HIT" || w.Body.Len() != 0 || w.Header().Get("Content-Length") != "2" {
		t.Errorf("HEAD: X-Cache %q body %q Content-Length %q; want a HIT from the GET entry, no body", w.Header().Get("X-Cache"), w.Body, w.Header().Get("Content-Length"))
	}
	clk.advance(3 * time.Second)
	if w = do(c, rules, o.next, "GET", "/api/v3/ticker?symbol=X"); w.Body.String() != "v2" {
		t.Errorf("after TTL: %q, want a new fetch v2", w.Body)
	}
	if o.hits.Load() != 2 {
		t.Errorf("upstream hits %d, want 2", o.hits.Load())
	}
}

func TestBypass(t *testing.T) {
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") })
	c := newCache(t, &clock{t: time.Now()}, 1<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	for _, tt := range []struct {
		name, method, target string
		hdr                  []string
		want                 string
	}{
		{"API key header", "GET", "/api/v3/ticker", []string{"X-MBX-APIKEY", "k"}, "BYPASS"},
		{"Authorization", "GET", "/api/v3/ticker", []string{"Authorization", "Bearer t"}, "BYPASS"},
		{"signature parameter", "GET", "/api/v3/ticker?signature=abc", nil, "BYPASS"},
		{"no rule", "GET", "/api/v3/account", nil, "BYPASS"},
		{"POST", "POST", "/api/v3/ticker", nil, "BYPASS"},
		{"public endpoint with a key", "GET", "/api/v3/historicalTrades?symbol=X", []string{"X-MBX-APIKEY", "k"}, "MISS"},
		{"public endpoint, again", "GET", "/api/v3/historicalTrades?symbol=X", []string{"X-MBX-APIKEY", "other"}, "HIT"},
	} {
		for range 2 {
			if got := do(c, rules, o.next, tt.method, tt.target, tt.hdr...).Header().Get("X-Cache"); got != tt.want && !(tt.want == "MISS" && got == "HIT") {
				t.Errorf("%s: X-Cache %q, want %q", tt.name, got, tt.want)
			}
		}
	}
}

func TestOnlyStatusesStored(t *testing.T) {
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) })
	c := newCache(t, &clock{t: time.Now()}, 1<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	do(c, rules, o.next, "GET", "/api/v3/ticker")
	if w := do(c, rules, o.next, "GET", "/api/v3/ticker"); w.Code != 404 || w.Header().Get("X-Cache") != "MISS" || o.hits.Load() != 2 {
		t.Errorf("404: second answer %d %q after %d upstream hits; want it not stored", w.Code, w.Header().Get("X-Cache"), o.hits.Load())
	}
}

func TestStaleIfError(t *testing.T) {
	for _, tt := range []struct {
		name string
		fail func(o *origin)
	}{
		{"500", func(o *origin) { o.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }) }},
		{"429", func(o *origin) {
			o.set(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Retry-After", "5"); w.WriteHeader(429) })
		}},
		{"418 ban", func(o *origin) { o.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(418) }) }},
		{"connection refused", func(o *origin) { o.srv.Close() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "good") })
			clk := &clock{t: time.Now()}
			c := newCache(t, clk, 1<<20)
			rules := rulesOf(t, config.CacheRules, 60*time.Second, tickerRules)
			do(c, rules, o.next, "GET", "/api/v3/ticker")
			tt.fail(o)
			clk.advance(30 * time.Second) // expired 25 s ago: inside the 60 s window
			w := do(c, rules, o.next, "GET", "/api/v3/ticker")
			if w.Code != 200 || w.Body.String() != "good" || w.Header().Get("X-Cache") != "STALE" {
				t.Errorf("within the stale window: %d %q X-Cache %q; want the stale 200", w.Code, w.Body, w.Header().Get("X-Cache"))
			}
			clk.advance(60 * time.Second) // expired 85 s ago
			w = do(c, rules, o.next, "GET", "/api/v3/ticker")
			if w.Code == 200 || w.Header().Get("X-Cache") == "STALE" {
				t.Errorf("past the stale window: %d X-Cache %q; want the upstream's failure", w.Code, w.Header().Get("X-Cache"))
			}
		})
	}
}

func TestMemoryBound(t *testing.T) {
	body := strings.Repeat("x", 1000)
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
	c := newCache(t, &clock{t: time.Now()}, 20_000)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	for i := range 100 {
		do(c, rules, o.next, "GET", fmt.Sprintf("/api/v3/ticker?symbol=S%d", i))
	}
	if c.size > 20_000 || c.Len() > 20 || testutil.ToFloat64(c.evictions) == 0 {
		t.Errorf("after 100 x 1 kB: %d bytes in %d entries, %v evictions; want at most 20000 bytes", c.size, c.Len(), testutil.ToFloat64(c.evictions))
	}
	if w := do(c, rules, o.next, "GET", "/api/v3/ticker?symbol=S99"); w.Header().Get("X-Cache") != "HIT" {
		t.Error("the most recent entry was evicted")
	}
	if w := do(c, rules, o.next, "GET", "/api/v3/ticker?symbol=S0"); w.Header().Get("X-Cache") != "MISS" {
		t.Error("the oldest entry survived")
	}
}

func TestTooLargeIsPassedThrough(t *testing.T) {
	big := strings.Repeat("b", 2<<20)
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, big) })
	c := newCache(t, &clock{t: time.Now()}, 64<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	for i := range 2 {
		w := do(c, rules, o.next, "GET", "/big")
		if w.Body.String() != big {
			t.Fatalf("request %d: got %d bytes, want the whole %d", i, w.Body.Len(), len(big))
		}
	}
	if c.size > 1<<20 {
		t.Errorf("a body over max_object_bytes was stored (%d bytes held)", c.size)
	}
}

// TestEncodingsKeptApart: a gzip answer fetched for a client that accepts
// gzip is not served to one that does not.
func TestEncodingsKeptApart(t *testing.T) {
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			io.WriteString(w, "GZIPPED")
			return
		}
		io.WriteString(w, "plain")
	})
	c := newCache(t, &clock{t: time.Now()}, 1<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	do(c, rules, o.next, "GET", "/api/v3/ticker", "Accept-Encoding", "gzip, deflate")
	if w := do(c, rules, o.next, "GET", "/api/v3/ticker"); w.Body.String() != "plain" || w.Header().Get("Content-Encoding") != "" {
		t.Errorf("client without Accept-Encoding got %q (Content-Encoding %q)", w.Body, w.Header().Get("Content-Encoding"))
	}
	if w := do(c, rules, o.next, "GET", "/api/v3/ticker", "Accept-Encoding", "deflate, gzip"); w.Header().Get("X-Cache") != "HIT" {
		t.Errorf("same codings in another order: X-Cache %q, want HIT", w.Header().Get("X-Cache"))
	}
}

// headerLog is a ResponseWriter that keeps the status of every
// WriteHeader, 1xx included.
type headerLog struct {
	header   http.Header
	statuses []int
}

func (w *headerLog) Header() http.Header         { return w.header }
func (w *headerLog) Write(p []byte) (int, error) { return len(p), nil }
func (w *headerLog) WriteHeader(code int)        { w.statuses = append(w.statuses, code) }

// TestFillPassesEarlyHints: the 1xx responses of a fill reach the request
// that started it, also when the fill has ended before that request looks.
func TestFillPassesEarlyHints(t *testing.T) {
	c := newCache(t, &clock{t: time.Unix(1e9, 0)}, 1<<20)
	rules := rulesOf(t, config.CacheRules, 0, tickerRules)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "{}")
	})
	for i := range 300 {
		r := httptest.NewRequest(http.MethodGet, fmt.Sprintf("https://a.test/api/v3/ticker?symbol=S%d", i), nil)
		w := &headerLog{header: http.Header{}}
		c.Handle(w, r, "a.test:443", rules, next)
		if !slices.Equal(w.statuses, []int{http.StatusEarlyHints, http.StatusOK}) {
			t.Fatalf("fill %d: statuses written %v, want [103 200]", i, w.statuses)
		}
	}
}
