package throttle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"sluice/internal/config"
	"sluice/internal/testenv"
)

// profileSpecs compiles a profile's budgets.
func profileSpecs(t testing.TB, name string) Specs {
	t.Helper()
	ps, err := config.Profiles()
	if err != nil {
		t.Fatal(err)
	}
	specs, err := CompileAll(ps[name].Throttle, name, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return specs
}

// pick is the first throttle r spends, or nil.
func pick(specs Specs, r *http.Request) *Spec {
	if picked := specs.PickAll(r); len(picked) > 0 {
		return picked[0]
	}
	return nil
}

func binanceSpec(t testing.TB) *Spec {
	t.Helper()
	s := pick(profileSpecs(t, "binance"), httptest.NewRequest("GET", "https://api.binance.com/api/v3/time", nil))
	if s == nil {
		t.Fatal("binance profile has no budget for /api/v3")
	}
	return s
}

func TestBinanceWeights(t *testing.T) {
	s := binanceSpec(t)
	if s.name != "binance-spot" || s.cfg.Limit != 6000 || s.cfg.Window.D() != time.Minute {
		t.Fatalf("spot budget %q %v per %v, want binance-spot 6000 per 1m", s.name, s.cfg.Limit, s.cfg.Window.D())
	}
	for _, tt := range []struct {
		target string
		want   float64
	}{
		{"/api/v3/klines?symbol=BTCUSDT&interval=1m", 2},
		{"/api/v3/depth?symbol=BTCUSDT", 5},
		{"/api/v3/depth?symbol=BTCUSDT&limit=500", 25},
		{"/api/v3/depth?symbol=BTCUSDT&limit=1000", 50},
		{"/api/v3/depth?symbol=BTCUSDT&limit=5000", 250},
		{"/api/v3/ticker/24hr?symbol=BTCUSDT", 2},
		{"/api/v3/ticker/24hr", 80},
		{`/api/v3/ticker/24hr?symbols=["BTCUSDT","ETHUSDT"]`, 2},
		{"/api/v3/ticker/price?symbol=BTCUSDT", 2},
		{"/api/v3/ticker/price", 4},
		{"/api/v3/exchangeInfo", 20},
		{"/api/v3/trades?symbol=X", 25},
		{"/api/v3/ping", 1},
	} {
		r := httptest.NewRequest("GET", "https://api.binance.com"+tt.target, nil)
		if got := s.Cost(r); got != tt.want {
			t.Errorf("Cost(%s) = %v, want %v", tt.target, got, tt.want)
		}
	}
	specs := profileSpecs(t, "binance")
	for path, want := range map[string]string{"/fapi/v1/depth": "binance-usdm", "/dapi/v1/depth": "binance-coinm", "/sapi/v1/asset": "binance-spot", "/FAPI/v1/depth": "binance-usdm"} {
		s := pick(specs, httptest.NewRequest("GET", "https://fapi.binance.com"+path, nil))
		if s == nil || s.name != want {
			t.Errorf("budget for %s = %v, want %s", path, s, want)
		}
	}
	if s := pick(specs, httptest.NewRequest("GET", "https://fapi.binance.com/fapi/v1/depth", nil)); s.cfg.Limit != 2400 {
		t.Errorf("binance-usdm limit %v, want 2400/min", s.cfg.Limit)
	}
	if got := s.Cost(httptest.NewRequest("GET", "https://api.binance.com/API/V3/DEPTH?symbol=X&limit=5000", nil)); got != 250 {
		t.Errorf("Cost of an upper-case spelling of depth = %v, want 250: case must not lower the weight", got)
	}
}

func newLimiter(t *testing.T) *Limiter {
	l, err := New(slog.New(slog.DiscardHandler), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func bucketSpec(t *testing.T, rate, burst float64, maxWait time.Duration) *Spec {
	s, err := Compile(&config.Throttle{Model: "token_bucket", Rate: rate, Burst: burst}, "test", maxWait)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func request(client string) *http.Request {
	r := httptest.NewRequest("GET", "https://api.test/x", nil)
	r.RemoteAddr = client + ":1234"
	return r
}

// TestFairness: a bot with 40 queued requests does not delay another
// bot's few: clients take turns. (In a synctest bubble: its clock moves
// only when every goroutine waits, so the order is the queue's alone.)
func TestFairness(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(t)
		spec := bucketSpec(t, 100, 1, 30*time.Second)
		var mu sync.Mutex
		var order []string
		var wg sync.WaitGroup
		run := func(client string, n int) {
			for range n {
				wg.Go(func() {
					if _, err := l.Acquire(t.Context(), spec, "api.test", request(client)); err != nil {
						t.Error(err)
					}
					mu.Lock()
					order = append(order, client)
					mu.Unlock()
				})
			}
		}
		run("10.0.0.1", 40)
		synctest.Wait() // the busy bot has queued
		run("10.0.0.2", 5)
		wg.Wait()
		last := 0
		for i, c := range order {
			if c == "10.0.0.2" {
				last = i
			}
		}
		if last > 25 {
			t.Errorf("the quiet client's 5 requests finished at position %d of %d; want them interleaved early: %v", last, len(order), order)
		}
	})
}

func TestMaxWaitAndDisconnect(t *testing.T) {
	l := newLimiter(t)
	spec := bucketSpec(t, 0.5, 1, 100*time.Millisecond)
	if _, err := l.Acquire(context.Background(), spec, "api.test", request("c")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(context.Background(), spec, "api.test", request("c")); !errors.Is(err, ErrTimeout) {
		t.Errorf("over budget past max_wait: err %v, want ErrTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	spec.maxWait = time.Minute
	done := make(chan error)
	go func() { _, err := l.Acquire(ctx, spec, "api.test", request("c")); done <- err }()
	testenv.WaitFor(t, 10*time.Second, "the request queued", func() bool { return testutil.ToFloat64(l.metrics.queue.WithLabelValues("test")) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("client gone while queued: err %v", err)
	}
	if q := testutil.ToFloat64(l.metrics.queue.WithLabelValues("test")); q != 0 {
		t.Errorf("queue length %v after the client left, want 0", q)
	}
	if got := testutil.ToFloat64(l.metrics.rejects.WithLabelValues("test")); got != 1 {
		t.Errorf("rejected_total = %v, want 1", got)
	}
}

// serveThrough sends r through the throttle stage of specs to an upstream
// that answers status, header and body, as the pipeline does.
func serveThrough(l *Limiter, specs Specs, r *http.Request, status int, header http.Header, body string) *httptest.ResponseRecorder {
	upstream := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		maps.Copy(w.Header(), header)
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
	rec := httptest.NewRecorder()
	Middleware(l, func(*http.Request) (Specs, string) { return specs, r.URL.Hostname() })(upstream).ServeHTTP(rec, r)
	return rec
}

func TestFeedback(t *testing.T) {
	l := newLimiter(t)
	spec := binanceSpec(t)
	r := httptest.NewRequest("GET", "https://api.binance.com/api/v3/ping", nil)
	// Another client outside sluice spent most of the minute's weight.
	serveThrough(l, Specs{spec}, r, 200, http.Header{"X-Mbx-Used-Weight-1m": {"5999"}}, "{}")
	in := l.instance(spec, "api.binance.com", r)
	if got := in.available(l.now()); got != 1 {
		t.Errorf("after X-MBX-USED-WEIGHT-1M: 5999: %v available, want 1", got)
	}
	serveThrough(l, Specs{spec}, r, 418, http.Header{"Retry-After": {"120"}}, "")
	if d := in.pausedUntil.Sub(l.now()); d < 119*time.Second {
		t.Errorf("after a 418 with Retry-After 120: paused for %v", d)
	}
	spec.maxWait = 50 * time.Millisecond
	if _, err := l.Acquire(context.Background(), spec, "api.binance.com", r); !errors.Is(err, ErrTimeout) {
		t.Errorf("while banned: err %v, want a wait that times out", err)
	}
	if got := testutil.ToFloat64(l.metrics.limitedVec.WithLabelValues("binance-spot", "418")); got != 1 {
		t.Errorf("upstream_limited_total{418} = %v", got)
	}
}

func TestAPIKeyBudgetsAreHashed(t *testing.T) {
	s, err := Compile(&config.Throttle{Model: "leaky_bucket", Capacity: 40, LeakRate: 2, Key: "host_api_key",
		KeyHeaders: []string{"X-Shopify-Access-Token"}}, "shopify", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a := request("c")
	a.Header.Set("X-Shopify-Access-Token", "shpat_secret")
	b := request("c")
	b.Header.Set("X-Shopify-Access-Token", "shpat_other")
	ka, kb := s.keyPart("shop1.myshopify.com", a), s.keyPart("shop1.myshopify.com", b)
	if ka == kb || len(ka) < 20 || strings.Contains(ka, "shpat") {
		t.Errorf("keys %q and %q: want distinct, hashed, never the token", ka, kb)
	}
}

// BenchmarkAcquireUnderBudget is the latency the throttle adds to a
// request when the budget has room: the common case.
func BenchmarkAcquireUnderBudget(b *testing.B) {
	l, _ := New(slog.New(slog.DiscardHandler), nil, nil, nil)
	spec := binanceSpec(b)
	spec.cfg.Limit = 1e12 // never the limit: measure the bookkeeping
	spec.feedback = 0
	r := httptest.NewRequest("GET", "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=100", nil)
	for b.Loop() {
		if _, err := l.Acquire(context.Background(), spec, "api.binance.com", r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestShopifyGraphQLCost: the GraphQL budget is picked by path and
// re-synced from the cost extension in the response body.
func TestShopifyGraphQLCost(t *testing.T) {
	specs := profileSpecs(t, "shopify")
	gql := httptest.NewRequest("POST", "https://shop1.myshopify.com/admin/api/2025-01/graphql.json", nil)
	gql.Header.Set("X-Shopify-Access-Token", "shpat_x")
	rest := httptest.NewRequest("GET", "https://shop1.myshopify.com/admin/api/2025-01/products.json", nil)
	if pick(specs, gql).name != "shopify-graphql" || pick(specs, rest).name != "shopify-rest" {
		t.Fatalf("picked %q for GraphQL and %q for REST", pick(specs, gql).name, pick(specs, rest).name)
	}
	l := newLimiter(t)
	body := `{"data":{},"extensions":{"cost":{"requestedQueryCost":101,"actualQueryCost":46,"throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":700.0,"restoreRate":50.0}}}}`
	serveThrough(l, specs, gql, 200, http.Header{}, body) // the cost is read at the body's end
	m, now := l.instance(pick(specs, gql), "shop1.myshopify.com", gql).m, l.now()
	avail, _ := m.Available(t.Context(), now)
	wait, _ := m.Wait(t.Context(), now, avail+50)
	if m.Capacity() != 1000 || avail > 701 || avail < 699 || wait < 990*time.Millisecond || wait > time.Second {
		t.Errorf("after throttleStatus 700/1000 at 50/s: bucket %v with %v available, 50 more in %v", m.Capacity(), avail, wait)
	}
}
