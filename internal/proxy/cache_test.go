package proxy_test

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"sluice/internal/testpki"
)

// TestCacheThroughSluice: 200 clients asking at once for one cold klines
// URL through sluice cost the upstream exactly one request; later ones hit.
func TestCacheThroughSluice(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
		w.Header().Set("Cache-Control", "no-cache, no-store, must-revalidate") // what Binance sends
		io.WriteString(w, `[[1700000000000,"1","2","0.5","1.5","10"]]`)
	}), "api.binance.com")
	h := newHarness(t, upstreamEntry(t, "api.binance.com", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String(), "    profile: binance\n"))

	const n = 200
	clients := make([]*http.Client, 10) // 10 connections, 20 requests each
	for i := range clients {
		clients[i] = h.client(i%2 == 0)
	}
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Go(func() {
			resp, err := clients[i%len(clients)].Get("https://api.binance.com/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=500")
			if err != nil {
				results[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results[i] = resp.Header.Get("X-Cache") + " " + string(b)
		})
	}
	waitFor(t, "all requests to wait on the one fetch", func() bool {
		return h.metric("sluice_cache_coalesced_total", "", "") >= n-1 || hits.Load() > 1
	})
	close(release)
	wg.Wait()
	if got := hits.Load(); got != 1 {
		t.Errorf("%d concurrent requests made %d upstream requests, want 1", n, got)
	}
	for i, r := range results {
		if r != `MISS [[1700000000000,"1","2","0.5","1.5","10"]]` {
			t.Fatalf("client %d got %q", i, r)
		}
	}
	resp, body := get(t, h.client(false), "https://api.binance.com/api/v3/klines?interval=1m&limit=500&symbol=BTCUSDT")
	if resp.Header.Get("X-Cache") != "HIT" || hits.Load() != 1 {
		t.Errorf("same key, parameters reordered: X-Cache %q body %s, upstream hits %d; want a HIT", resp.Header.Get("X-Cache"), body, hits.Load())
	}
}
