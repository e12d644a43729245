package cache

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/config"
	"sluice/internal/testenv"
)

// refreshOrigin answers "v1", "v2", ... and takes rtt of the test clock
// to do it; while gate is set, it holds its answer until gate is closed.
type refreshOrigin struct {
	*origin
	version atomic.Int64
	mu      sync.Mutex
	gate    chan struct{}
}

func newRefreshOrigin(t *testing.T, clk *clock, rtt time.Duration) *refreshOrigin {
	o := &refreshOrigin{}
	o.origin = newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		gate := o.gate
		o.mu.Unlock()
		if gate != nil {
			<-gate
		}
		clk.advance(rtt)
		fmt.Fprintf(w, "v%d", o.version.Add(1))
	})
	return o
}

func (o *refreshOrigin) hold() chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.gate = make(chan struct{})
	return o.gate
}

func (o *refreshOrigin) release(gate chan struct{}) {
	o.mu.Lock()
	o.gate = nil
	o.mu.Unlock()
	close(gate)
}

func waitHits(t *testing.T, o *refreshOrigin, n int64) {
	t.Helper()
	testenv.WaitFor(t, time.Second, fmt.Sprintf("%d upstream requests", n), func() bool { return o.hits.Load() >= n })
}

// TestRefreshWhileServing: a hit within two upstream round trips of its
// entry's expiry starts one background refresh (however many hits come
// meanwhile) and answers from the current copy; a hit just past the
// expiry, within the grace, answers STALE and refreshes; past the grace a
// request waits for the fill. The upstream sees one call per TTL.
func TestRefreshWhileServing(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	const rtt, ttl = 100 * time.Millisecond, time.Second
	o := newRefreshOrigin(t, clk, rtt)
	c, err := New(Options{MaxBytes: 1 << 20, MaxObjectBytes: 1 << 20, FetchTimeout: 10 * time.Second, RefreshGrace: -1,
		Now: clk.now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rules := rulesOf(t, config.CacheRules, 0, "        - {path: /t, ttl: 1s}\n")
	get := func() (string, string) {
		w := do(c, rules, o.next, "GET", "/t")
		return w.Header().Get("X-Cache"), w.Body.String()
	}
	if xc, body := get(); xc != "MISS" || body != "v1" {
		t.Fatalf("first: %s %s", xc, body)
	}
	clk.advance(ttl - 2*rtt - 10*time.Millisecond)
	if xc, body := get(); xc != "HIT" || body != "v1" || o.hits.Load() != 1 {
		t.Fatalf("more than two round trips before the expiry: %s %s (upstream %d); want a plain HIT", xc, body, o.hits.Load())
	}

	clk.advance(60 * time.Millisecond) // within two round trips of the expiry
	gate := o.hold()
	var wg sync.WaitGroup
	var served atomic.Int64
	for range 20 {
		wg.Go(func() {
			if xc, body := get(); (xc == "REFRESH" || xc == "HIT") && body == "v1" {
				served.Add(1)
			}
		})
	}
	wg.Wait() // every hit answered while the refresh is held upstream
	if served.Load() != 20 {
		t.Errorf("%d of 20 hits near the expiry were answered from the current copy", served.Load())
	}
	waitHits(t, o, 2)
	o.release(gate)
	testenv.WaitFor(t, time.Second, "the refresh's v2", func() bool { _, body := get(); return body == "v2" })
	if n := o.hits.Load(); n != 2 {
		t.Errorf("20 hits near the expiry made %d upstream calls in all, want 2 (one refresh)", n)
	}
	if xc, body := get(); xc != "HIT" || body != "v2" {
		t.Errorf("after the refresh: %s %s", xc, body)
	}

	// Just past the expiry, within the grace (the fill's round trip): STALE, refreshed.
	clk.advance(ttl + rtt/2)
	gate = o.hold()
	if xc, body := get(); xc != "STALE" || body != "v2" {
		t.Errorf("within the grace past the expiry: %s %s; want STALE v2", xc, body)
	}
	waitHits(t, o, 3)
	o.release(gate)
	testenv.WaitFor(t, time.Second, "the refresh's v3", func() bool { _, body := get(); return body == "v3" })

	// Past the grace: the request waits for its fill.
	clk.advance(ttl + 2*rtt)
	if xc, body := get(); xc != "MISS" || body != "v4" {
		t.Errorf("past the grace: %s %s; want a MISS that fetched v4", xc, body)
	}
	if n := o.hits.Load(); n != 4 {
		t.Errorf("%d upstream calls for 4 TTLs", n)
	}
}

// TestRefreshGraceOff: refresh_grace 0s never answers past the TTL.
func TestRefreshGraceOff(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	o := newRefreshOrigin(t, clk, 100*time.Millisecond)
	c, err := New(Options{MaxBytes: 1 << 20, MaxObjectBytes: 1 << 20, FetchTimeout: 10 * time.Second, RefreshGrace: 0,
		Now: clk.now, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rules := rulesOf(t, config.CacheRules, 0, "        - {path: /t, ttl: 1s}\n")
	do(c, rules, o.next, "GET", "/t")
	clk.advance(time.Second + 10*time.Millisecond)
	if w := do(c, rules, o.next, "GET", "/t"); w.Header().Get("X-Cache") != "MISS" || w.Body.String() != "v2" {
		t.Errorf("past the TTL with refresh_grace 0s: %s %s", w.Header().Get("X-Cache"), w.Body.String())
	}
}
