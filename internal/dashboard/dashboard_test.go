package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/obs"
	"sluice/internal/store"
	"sluice/internal/streams"
	"sluice/internal/throttle"
)

// TestSampleRates: the Status's rates are the counters' growth between
// two samples, its totals their values, its history one Point a sample.
func TestSampleRates(t *testing.T) {
	reg := prometheus.NewRegistry()
	cacheReqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_cache_requests_total"}, []string{"result"})
	proxyReqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_proxy_requests_total"}, []string{"mode", "decision", "code"})
	coalesced := prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_cache_coalesced_total"})
	reg.MustRegister(cacheReqs, proxyReqs, coalesced)
	d := New(Sources{Gatherer: reg, Instance: "gw-1",
		Budgets: func() []throttle.Level {
			return []throttle.Level{{Budget: "binance", Available: 300, Capacity: 1200, Queued: 2}}
		},
		Refusals: func() []obs.Refusal {
			return []obs.Refusal{{ClientIP: "10.0.0.5", Host: "evil.test:443", Method: "CONNECT", Stage: "policy", Reason: "host not listed"}}
		},
		Bans: func(context.Context) ([]store.Ban, error) {
			return []store.Ban{{Client: "203.0.113.9", Until: time.Now().Add(time.Hour), Reason: "rules"}}, nil
		},
		Streams: func() []streams.HubStatus {
			return []streams.HubStatus{{Host: "stream.binance.com", Connections: 1, Clients: 41,
				Streams: []streams.StreamStatus{{Name: "btcusdt@depth@100ms", Clients: 20, Conn: 3}}}}
		}})
	d.sample(t.Context())
	cacheReqs.WithLabelValues("hit").Add(30)
	cacheReqs.WithLabelValues("miss").Add(10)
	proxyReqs.WithLabelValues("intercept", "intercept", "2xx").Add(40)
	proxyReqs.WithLabelValues("connect", "deny", "4xx").Add(5)
	coalesced.Add(4)
	d.mu.Lock()
	d.lastAt = d.lastAt.Add(-time.Second) // as if a second had passed
	d.mu.Unlock()
	d.sample(t.Context())
	st := d.Status(t.Context(), true)
	if st.Now.Requests < 40 || st.Now.Requests > 46 || st.Now.HitRatio != 0.75 || st.Now.Refused < 4 {
		t.Errorf("rates %+v; want about 45 requests, 5 refused a second, hit ratio 0.75", st.Now)
	}
	if st.Totals.Saved != 34 || st.Totals.Requests != 45 || st.Totals.Refused != 5 {
		t.Errorf("totals %+v; want 45 requests, 5 refused, 34 upstream calls saved (30 hits, 4 coalesced)", st.Totals)
	}
	if len(st.History) != 1 {
		t.Errorf("%d history points after two samples, want 1", len(st.History))
	}
	var b strings.Builder
	if err := st.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sluice gw-1", "hit ratio 75.0% now", "upstream calls saved 34", "binance", "[####------------]  300 of 1200  2",
		"10.0.0.5", "evil.test:443", "host not listed", "203.0.113.9", "MARKET STREAMS", "stream.binance.com  1", "btcusdt@depth@100ms  stream.binance.com  20"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("sluice status screen has no %q:\n%s", want, b.String())
		}
	}
}

// TestHistoryKeepsMinutes: the history is a ring of the last keep points, in order.
func TestHistoryKeepsMinutes(t *testing.T) {
	d := New(Sources{})
	for i := range keep + 7 {
		d.push(Point{Time: int64(i)})
	}
	h := d.Status(t.Context(), true).History
	if len(h) != keep || h[0].Time != 7 || h[keep-1].Time != keep+6 {
		t.Errorf("history of %d from %d to %d; want %d from 7 to %d", len(h), h[0].Time, h[len(h)-1].Time, keep, keep+6)
	}
}

// TestPageAndEvents: the page is served with a policy that allows only its
// own script and style; the event stream's first event has the history and
// the stream ends with Run.
func TestPageAndEvents(t *testing.T) {
	d := New(Sources{})
	mux := http.NewServeMux()
	d.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); resp.StatusCode != 200 || !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("GET /: %d, CSP %q", resp.StatusCode, csp)
	}
	for _, asset := range []string{"/dashboard/dashboard.js", "/dashboard/dashboard.css", "/dashboard/favicon.svg"} {
		if resp, err := http.Get(srv.URL + asset); err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", asset, resp.Status, err)
		} else {
			resp.Body.Close()
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	go func() { d.Run(ctx); close(ran) }()
	resp, err = http.Get(srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var events []Status
	for sc.Scan() && len(events) < 2 {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var st Status
			if err := json.Unmarshal([]byte(data), &st); err != nil {
				t.Fatal(err)
			}
			events = append(events, st)
		}
	}
	if len(events) != 2 || events[1].History != nil || !events[1].Time.After(events[0].Time) {
		t.Errorf("events %+v; want two, a second apart, the second without history", events)
	}
	cancel()
	<-ran
	for sc.Scan() { // the stream ends once Run has
	}
}

// TestComponentsReadOnlyWhenAsked: with no event stream open, a sample
// reads only the metrics; the components (budgets may cost Redis round
// trips) are read when /status asks.
func TestComponentsReadOnlyWhenAsked(t *testing.T) {
	var reads atomic.Int64
	d := New(Sources{Budgets: func() []throttle.Level { reads.Add(1); return nil }})
	d.sample(t.Context())
	d.sample(t.Context())
	if n := reads.Load(); n != 0 {
		t.Errorf("two samples with nobody watching read the budgets %d times", n)
	}
	d.Status(t.Context(), false)
	if n := reads.Load(); n != 1 {
		t.Errorf("a status request read the budgets %d times, want 1", n)
	}
	d.watchers.Add(1)
	d.sample(t.Context())
	d.Status(t.Context(), false)
	if n := reads.Load(); n != 2 {
		t.Errorf("with a stream open, a sample and a status read the budgets %d times in all, want 2", n)
	}
}
