package proxy_test

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"sluice/internal/testpki"
)

// etsyUpstream enforces Etsy's two windows per API key (x-api-key): perSecond
// in any second and perDay in all, and reports both on every answer as Etsy
// does, answering 429 with retry-after past either.
type etsyUpstream struct {
	perSecond, perDay int

	mu      sync.Mutex
	recent  map[string][]time.Time
	today   map[string]int
	refused int
}

func (u *etsyUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("X-Api-Key")
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	var kept []time.Time
	for _, t := range u.recent[key] {
		if now.Sub(t) < time.Second {
			kept = append(kept, t)
		}
	}
	over := len(kept) >= u.perSecond || u.today[key] >= u.perDay
	if !over {
		kept = append(kept, now)
		u.today[key]++
	}
	u.recent[key] = kept
	h := w.Header()
	h.Set("x-limit-per-second", strconv.Itoa(u.perSecond))
	h.Set("x-remaining-this-second", strconv.Itoa(max(u.perSecond-len(kept), 0)))
	h.Set("x-limit-per-day", strconv.Itoa(u.perDay))
	h.Set("x-remaining-today", strconv.Itoa(max(u.perDay-u.today[key], 0)))
	if over {
		u.refused++
		h.Set("retry-after", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	fmt.Fprint(w, `{"count":0,"results":[]}`)
}

// spend counts n requests of key made around sluice (another app instance).
func (u *etsyUpstream) spend(key string, n int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.today[key] += n
}

// TestEtsyBudgets: the etsy profile spends a per-second and a per-day
// budget per API key. Against an upstream that enforces both (10 a second,
// and a day's plan of 25 that it reports in x-limit-per-day, which sluice
// takes over from the profile's 10,000), a burst of 40 requests on one key
// gets 25 through and 15 answered 429 by sluice itself, and the upstream
// never refuses one; another key has budgets of its own; the drift metric
// shows what the upstream counted beyond sluice (requests made around it).
func TestEtsyBudgets(t *testing.T) {
	up := &etsyUpstream{perSecond: 10, perDay: 25, recent: map[string][]time.Time{}, today: map[string]int{}}
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "openapi.etsy.com")
	h := newHarness(t, upstreamEntry(t, "openapi.etsy.com", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr().String()),
		"throttle: {max_wait: 5s}")
	send := func(key string, n int) (codes map[int]int) {
		codes = map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		c := h.client(false)
		for range 4 {
			wg.Go(func() {
				for range n / 4 {
					req, _ := http.NewRequest(http.MethodGet, "https://openapi.etsy.com/v3/application/listings/active", nil)
					req.Header.Set("X-Api-Key", key)
					resp, err := c.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					mu.Lock()
					codes[resp.StatusCode]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return codes
	}
	if codes := send("app-key-1", 40); codes[http.StatusOK] != 25 || codes[http.StatusTooManyRequests] != 15 {
		t.Errorf("40 requests on one key: %v, want 25 200s and 15 429s", codes)
	}
	if codes := send("app-key-2", 8); codes[http.StatusOK] != 8 {
		t.Errorf("8 requests on another key: %v, want 8 200s", codes)
	}
	if up.refused != 0 {
		t.Errorf("the upstream refused %d requests; sluice must keep within both windows", up.refused)
	}
	budgets := 0
	for _, l := range h.accessLines() {
		if l["status"] == float64(http.StatusTooManyRequests) && l["refused_by"] == "budget" {
			budgets++
		}
	}
	if budgets != 15 {
		t.Errorf("%d access lines of sluice's own 429 (refused_by budget), want 15", budgets)
	}

	// Another instance of the app spent 5 of key 3's day: sluice's first
	// request on it counted 1, the upstream 6.
	up.spend("app-key-3", 5)
	if codes := send("app-key-3", 4); codes[http.StatusOK] != 4 {
		t.Fatalf("4 requests on a third key: %v, want 4 200s", codes)
	}
	if d := h.metric("sluice_throttle_drift", "budget", "etsy-day"); d >= 0 {
		t.Errorf("sluice_throttle_drift{budget=etsy-day} = %v after the upstream counted 5 more than sluice; want it negative", d)
	}
}
