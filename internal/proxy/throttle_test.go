package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"sluice/internal/testpki"
)

// strictUpstream enforces a budget exactly, like an exchange: past it, 429;
// a client that keeps going after a 429 is banned (418).
type strictUpstream struct {
	mu       sync.Mutex
	limited  int // 429 and 418 answers
	served   int
	decide   func(now time.Time) (ok bool, hdr http.Header)
	banned   bool
	sawLimit bool
}

func (u *strictUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body) // an exchange answers a whole request
	u.mu.Lock()
	defer u.mu.Unlock()
	ok, hdr := u.decide(time.Now())
	for k, v := range hdr {
		w.Header()[k] = v
	}
	switch {
	case u.banned || !ok && u.sawLimit:
		u.banned = true
		u.limited++
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTeapot)
	case !ok:
		u.sawLimit = true
		u.limited++
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	default:
		u.served++
		io.WriteString(w, "ok")
	}
}

// fixedWindow is Binance's model: limit weight per window, windows fixed
// on the upstream's own clock, used weight reported in a header.
func fixedWindow(limit int, span time.Duration, spentOutside *int) func(time.Time) (bool, http.Header) {
	start := time.Now()
	used := 0
	return func(now time.Time) (bool, http.Header) {
		if now.Sub(start) >= span {
			start, used = now.Truncate(span), 0
			if spentOutside != nil {
				used, *spentOutside = *spentOutside, 0
			}
		}
		if used+1 > limit {
			return false, http.Header{"X-Mbx-Used-Weight-1s": {strconv.Itoa(used)}}
		}
		used++
		return true, http.Header{"X-Mbx-Used-Weight-1s": {strconv.Itoa(used)}}
	}
}

func hammer(t *testing.T, h *harness, url string, clients, each int) (ok, refused int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := range clients {
		cl := h.client(c%2 == 0)
		wg.Go(func() {
			for range each {
				resp, err := cl.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode == 200 {
					ok++
				} else {
					refused++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return ok, refused
}

// TestThrottleKeepsUpstreamWithinBudget: 8 clients hammering a fixed-window
// upstream (20 per second, part of it spent by an outside client) through
// sluice: the upstream never has to refuse anything.
func TestThrottleKeepsUpstreamWithinBudget(t *testing.T) {
	outside := 15 // an outside client spends 15 of the first window
	up := &strictUpstream{decide: fixedWindow(20, time.Second, nil)}
	up.decide(time.Now()) // start the upstream's window
	for range outside - 1 {
		up.decide(time.Now())
	}
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr().String(),
		"    throttle: {model: window, limit: 20, window: 1s, feedback: [binance], max_wait: 30s}\n"))
	ok, refused := hammer(t, h, "https://api.test/api/v3/order", 8, 10)
	if up.limited != 0 || ok != 80 || refused != 0 {
		t.Errorf("80 requests: %d ok, %d refused; the upstream answered %d 429/418; want all ok and none", ok, refused, up.limited)
	}
}

// TestThrottleLeakyBucket: a Shopify-like leaky bucket of 5 leaking 10/s,
// reported in X-Shopify-Shop-Api-Call-Limit.
func TestThrottleLeakyBucket(t *testing.T) {
	var mu sync.Mutex
	level, last := 0.0, time.Now()
	up := &strictUpstream{decide: func(now time.Time) (bool, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		level = max(level-10*now.Sub(last).Seconds(), 0)
		last = now
		if level+1 > 5.0001 {
			return false, http.Header{"X-Shopify-Shop-Api-Call-Limit": {fmt.Sprintf("%d/5", int(level))}}
		}
		level++
		return true, http.Header{"X-Shopify-Shop-Api-Call-Limit": {fmt.Sprintf("%d/5", int(level+0.5))}}
	}}
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "shop.test")
	h := newHarness(t, upstreamEntry(t, "shop.test", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr().String(),
		"    throttle: {model: leaky_bucket, capacity: 5, leak_rate: 10, feedback: [shopify], key: host_api_key, max_wait: 30s}\n"))
	ok, _ := hammer(t, h, "https://shop.test/admin/api/2024-10/products.json", 6, 5)
	if up.limited != 0 || ok != 30 {
		t.Errorf("30 requests: %d ok; the upstream refused %d; want 30 and 0", ok, up.limited)
	}
}

// TestThrottleMaxWaitAnswers429: with the budget gone and max_wait short,
// sluice answers 429 with Retry-After itself and sends nothing upstream.
func TestThrottleMaxWaitAnswers429(t *testing.T) {
	up := &strictUpstream{decide: func(time.Time) (bool, http.Header) { return true, nil }}
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr().String(),
		"    throttle: {model: window, limit: 2, window: 1m, max_wait: 100ms}\n"))
	c := h.client(false)
	for i := range 3 {
		resp, body := get(t, c, "https://api.test/x")
		switch {
		case i < 2 && resp.StatusCode != 200:
			t.Errorf("request %d within budget: %d %s", i, resp.StatusCode, body)
		case i == 2 && (resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || decodeError(t, body).Error != "upstream budget exhausted"):
			t.Errorf("request over budget: %d Retry-After %q %s; want sluice's own 429", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		case i < 2 && resp.Header.Get("X-Sluice-Wait") == "":
			t.Errorf("request %d: no X-Sluice-Wait header", i)
		}
	}
	if up.served != 2 {
		t.Errorf("upstream served %d, want 2 (the refused one never left sluice)", up.served)
	}
}

// TestThrottlePausesOn429: an upstream 429 with Retry-After holds the
// budget's queue until it has passed.
func TestThrottlePausesOn429(t *testing.T) {
	var mu sync.Mutex
	var times []time.Time
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		io.WriteString(w, "ok")
	})
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr().String(),
		"    throttle: {model: token_bucket, rate: 1000, burst: 1000, max_wait: 10s}\n"))
	c := h.client(false)
	if resp, _ := get(t, c, "https://api.test/x"); resp.StatusCode != 429 {
		t.Fatalf("first: %d, want the upstream's 429", resp.StatusCode)
	}
	if resp, _ := get(t, c, "https://api.test/x"); resp.StatusCode != 200 {
		t.Fatalf("second: %d", resp.StatusCode)
	}
	if gap := times[1].Sub(times[0]); gap < 900*time.Millisecond {
		t.Errorf("second request reached the upstream %v after its 429 with Retry-After: 1; want it held about 1 s", gap)
	}
}

// TestSlowBodyIsNoProbe: the first request after a start probes the
// budget (nothing else goes out until the upstream reports its count). A
// POST whose client sends its body slowly must not be that probe: other
// clients of the budget go on at once, and the POST still gets through.
func TestSlowBodyIsNoProbe(t *testing.T) {
	up := &strictUpstream{decide: fixedWindow(100, time.Second, nil)}
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	h := newHarness(t, upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr().String(),
		"    throttle: {model: window, limit: 100, window: 1s, feedback: [binance], max_wait: 1s}\n"))
	body, feed := io.Pipe()
	slow := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "https://api.test/api/v3/order", body)
		resp, err := h.client(false).Do(req)
		if err != nil {
			t.Error(err)
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	fmt.Fprint(feed, "symbol=")
	// Its head is in the pipeline once the body stage holds memory for it.
	waitFor(t, "the slow POST's body to be read", func() bool { return h.metric("sluice_proxy_buffered_body_bytes", "", "") > 0 })
	c := h.client(false)
	for i := range 3 {
		resp, b := get(t, c, "https://api.test/api/v3/ticker")
		if resp.StatusCode != 200 {
			t.Errorf("GET %d while a slow POST sends its body: %d %s", i, resp.StatusCode, b)
		}
	}
	for _, s := range []string{"B", "T", "C"} {
		time.Sleep(100 * time.Millisecond)
		io.WriteString(feed, s)
	}
	feed.Close()
	if code := <-slow; code != 200 {
		t.Errorf("the slow POST: %d, want 200", code)
	}
}
