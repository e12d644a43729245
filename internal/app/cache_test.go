package app

import (
	"fmt"
	"io"
	"net/http"
	"sluice/internal/testpki"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRefreshWhileServingThroughSluice: 20 clients poll one key through
// sluice across several TTLs, in front of an upstream that takes 50 ms:
// after the first fill none of them waits for the upstream (no answer is a
// MISS), every answer says its age, and the upstream sees about one call
// per TTL. The grace past the TTL is set (300 ms): by default it is the
// fill's own round trip, and on a loaded machine (-race, CI) a refresh can
// take more than three first fills, after which waiting is what sluice
// should do; TestRefreshWhileServing holds the default with its own clock.
func TestRefreshWhileServingThroughSluice(t *testing.T) {
	var calls atomic.Int64
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		fmt.Fprintf(w, `{"price":"%d"}`, calls.Add(1))
	})
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	r := startRun(t, baseConfig(fmt.Sprintf("  api.test: {upstream_ca: %s, connect_to: %s, allow_private: true, cache: {rules: [{path: /api/, ttl: 1s}]}}\ncache: {refresh_grace: 300ms}\n",
		upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr())))
	c := r.client()
	// The first fill: every client waits for it once.
	if resp, err := c.Get("https://api.test/api/v3/ticker/price?symbol=BTCUSDT"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	var mu sync.Mutex
	results := map[string]int{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(3500 * time.Millisecond)
	start := time.Now()
	for range 20 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				resp, err := c.Get("https://api.test/api/v3/ticker/price?symbol=BTCUSDT")
				result := "error"
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					result = resp.Header.Get("X-Cache")
					if resp.Header.Get("Age") == "" {
						result += " without Age"
					}
				}
				mu.Lock()
				results[result]++
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	ttls := int64(time.Since(start)/time.Second) + 2 // the TTLs the polling touched, the first fill's included
	if results["MISS"] != 0 || results["error"] != 0 || len(results) > 3 {
		t.Errorf("answers after the first fill: %v; want only HIT, REFRESH and STALE, each with its Age", results)
	}
	if n := calls.Load(); n > ttls {
		t.Errorf("%d upstream calls in %d TTLs", n, ttls)
	}
	t.Logf("answers %v; %d upstream calls", results, calls.Load())
}
