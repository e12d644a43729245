package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
	"sluice/internal/testredis"
	"sluice/internal/throttle"
)

// strictUpstream allows limit requests in any window (sliding, exact) and
// answers 429 to every one beyond, as an exchange that bans on overrun.
type strictUpstream struct {
	limit  int
	window time.Duration

	mu               sync.Mutex
	served           []time.Time
	accepted, denied atomic.Int64
}

func (u *strictUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	now := time.Now()
	n := 0
	for _, at := range u.served {
		if now.Sub(at) < u.window {
			n++
		}
	}
	if n >= u.limit {
		u.mu.Unlock()
		u.denied.Add(1)
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	u.served = append(u.served, now)
	u.mu.Unlock()
	u.accepted.Add(1)
	io.WriteString(w, "ok")
}

// TestFleetBudget: three sluice instances share one budget in Redis in
// front of an upstream that allows 20 requests in any 5 s: under load from
// every instance the upstream answers no 429 and serves at least 95% of
// its budget; with Redis killed, each instance falls back to its share and
// still overruns nothing, and rejoins when Redis is back, counting what it
// spent meanwhile.
func TestFleetBudget(t *testing.T) {
	redis := testredis.Start(t)
	// A 5 s window: sluice holds each spending 5% longer (250 ms) than the
	// upstream counts it, for the requests granted together but delivered
	// apart (a new upstream connection's handshake, slow under -race).
	up := &strictUpstream{limit: 20, window: 5 * time.Second}
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	caPath := upCA.WritePEM(t, t.TempDir())
	var fleet []*running
	for i := range 3 {
		fleet = append(fleet, startRun(t, fmt.Sprintf(`listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}
data_dir: data
timeouts: {shutdown: 5s}
fleet: {redis: %q, instance: sluice%d}
hosts:
  api.test:
    upstream_ca: %s
    connect_to: %s
    allow_private: true
    cache: "off"
    throttle: {model: window, limit: 20, window: 5s, budget: exchange, max_wait: 500ms}
`, redis.URL(), i, caPath, srv.Listener.Addr())))
	}
	load := func(d time.Duration) {
		var wg sync.WaitGroup
		deadline := time.Now().Add(d)
		for _, r := range fleet {
			c := r.client()
			for range 6 {
				wg.Go(func() {
					for time.Now().Before(deadline) {
						if resp, err := c.Get("https://api.test/api/v3/order"); err == nil {
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					}
				})
			}
		}
		wg.Wait()
	}
	// Each instance's first request opens its upstream connection, whose
	// handshake (slow under -race) could deliver it after sluice's hold of
	// it ended: one request each, and then the shared budget whole again
	// (the fleet's meter has let them go).
	for _, r := range fleet {
		if resp, err := r.client().Get("https://api.test/api/v3/order"); err == nil {
			resp.Body.Close()
		}
	}
	testenv.WaitFor(t, 10*time.Second, "the fleet's budget whole again", func() bool {
		var st struct{ Budgets []throttle.Level }
		if err := json.Unmarshal([]byte(fleet[0].status(t)), &st); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(st.Budgets, func(l throttle.Level) bool { return l.Budget == "exchange" })
		return i >= 0 && st.Budgets[i].Available == st.Budgets[i].Capacity
	})
	up.mu.Lock()
	lastServed := up.served[len(up.served)-1]
	up.mu.Unlock()
	// sluice's meter holds each spending 5% past the upstream's window.
	if wait := time.Until(lastServed.Add(5 * time.Second)); wait > 0 {
		t.Fatalf("the fleet's budget was whole again %v before the upstream's window let its requests go", wait)
	}
	warm := up.accepted.Load()
	start := time.Now()
	load(11 * time.Second)
	windows := int(time.Since(start) / (5 * time.Second)) // whole windows the load ran
	if up.denied.Load() != 0 {
		t.Errorf("the upstream answered 429 %d times: the fleet overran the shared budget", up.denied.Load())
	}
	if got, budget := up.accepted.Load()-warm, int64(20*windows); got*100 < budget*95 {
		t.Errorf("the upstream served %d in %d windows of 20: under 95%% of the budget", got, windows)
	} else {
		t.Logf("the upstream served %d requests in %d windows of 20, none refused", got, windows)
	}

	redis.Stop()
	for _, r := range fleet {
		r.waitLog("fleet Redis does not answer")
	}
	before := up.accepted.Load()
	load(8 * time.Second) // the local shares start spent: they serve from 5.25 s on
	if up.denied.Load() != 0 {
		t.Errorf("with Redis down the upstream answered 429 %d times: the local shares overran it", up.denied.Load())
	}
	if up.accepted.Load() == before {
		t.Error("with Redis down nothing was served: the instances must keep serving on their shares")
	}
	redis.Restart()
	for _, r := range fleet {
		r.waitLog("fleet Redis answers again")
		var body string
		for range 50 { // each instance counts the others as their heartbeats come back
			if body = r.metrics(t); strings.Contains(body, "sluice_fleet_redis_up 1") && strings.Contains(body, "sluice_fleet_instances 3") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(body, "sluice_fleet_redis_up 1") || !strings.Contains(body, "sluice_fleet_instances 3") {
			t.Errorf("an instance 5 s after Redis returned: fleet metrics\n%s", grepLines(body, "sluice_fleet_"))
		}
	}
	// What the local shares spent is still in the upstream's window, and
	// Redis never saw it: the rejoined fleet must count it.
	load(6 * time.Second)
	if up.denied.Load() != 0 {
		t.Errorf("after Redis returned the upstream answered 429 %d times: the fleet spent again what its local shares had spent", up.denied.Load())
	}
}

// fleetAlone is how many of r's fills went to the upstream without the
// fleet (sluice_cache_fleet_total{result="alone"}).
func fleetAlone(t *testing.T, r *running) int {
	t.Helper()
	for l := range strings.Lines(r.metrics(t)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), `sluice_cache_fleet_total{result="alone"} `); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("sluice_cache_fleet_total: %q", l)
			}
			return n
		}
	}
	t.Fatal("no sluice_cache_fleet_total{result=\"alone\"} in the metrics")
	return 0
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

// TestFleetCache: three instances share a cache in Redis in front of an
// upstream that counts its calls: many clients on every instance polling
// a few keys across several TTLs make one upstream call per key per TTL
// for the whole fleet; a response to a request with credentials never
// reaches Redis; with Redis killed each instance still serves from its
// own cache and upstream.
func TestFleetCache(t *testing.T) {
	redis := testredis.Start(t)
	var mu sync.Mutex
	calls := map[string]int{}
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.URL.RequestURI()]++
		mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a fill others wait for
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"uri":%q}`, r.URL.RequestURI())
	})
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	caPath := upCA.WritePEM(t, t.TempDir())
	const ttl = time.Second
	// Redis is given a second to answer (the default is 100 ms): past its
	// timeout an instance rightly fills alone, and a machine loaded by the
	// parallel test run can take that long; this test is about the fleet
	// that Redis answers.
	fleet := startFleet(t, 3, redis.URL(), ", cache: true, timeout: 1s", fmt.Sprintf(`hosts:
  api.test:
    upstream_ca: %s
    connect_to: %s
    allow_private: true
    cache: {rules: [{path: /api/, ttl: %s, public: true}]}
`, caPath, srv.Listener.Addr(), ttl))
	keys := []string{"/api/v3/ticker?symbol=BTCUSDT", "/api/v3/ticker?symbol=ETHUSDT", "/api/v3/depth?symbol=BTCUSDT"}
	poll := func(d time.Duration, header http.Header) (served, failed int64) {
		var wg sync.WaitGroup
		var ok, bad atomic.Int64
		deadline := time.Now().Add(d)
		for _, r := range fleet {
			c := r.client()
			for i := range 8 {
				wg.Go(func() {
					for n := 0; time.Now().Before(deadline); n++ {
						req, _ := http.NewRequest(http.MethodGet, "https://api.test"+keys[(i+n)%len(keys)], nil)
						maps.Copy(req.Header, header)
						resp, err := c.Do(req)
						if err != nil {
							bad.Add(1)
							continue
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							bad.Add(1)
						} else {
							ok.Add(1)
						}
					}
				})
			}
		}
		wg.Wait()
		return ok.Load(), bad.Load()
	}
	start := time.Now()
	served, failed := poll(3500*time.Millisecond, nil)
	ttls := int(time.Since(start)/ttl) + 1 // the TTLs the polling touched
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, served+failed)
	}
	// A Redis call slower than the fleet timeout (a loaded machine) makes
	// instances fetch alone, as designed, and each such fill is counted:
	// only those may exceed one call per key per TTL.
	alone := 0
	for _, r := range fleet {
		alone += fleetAlone(t, r)
	}
	mu.Lock()
	extra := 0
	for _, k := range keys {
		extra += max(calls[k]-ttls, 0)
	}
	if extra > alone {
		t.Errorf("upstream calls %v in %d TTLs: %d more than one per key per TTL, and only %d fills made alone; the fleet must make one per TTL", calls, ttls, extra, alone)
	}
	t.Logf("%d requests served by 3 instances; upstream calls %v in %d TTLs, %d fills alone", served, calls, ttls, alone)
	mu.Unlock()

	// With credentials the response is the client's: each instance asks the upstream itself.
	for _, r := range fleet {
		req, _ := http.NewRequest(http.MethodGet, "https://api.test/api/v3/account", nil)
		req.Header.Set("X-MBX-APIKEY", "key-of-one-bot")
		resp, err := r.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	if n := calls["/api/v3/account"]; n != 3 {
		t.Errorf("a request with an API key on 3 instances made %d upstream calls, want 3: a credentialed response was shared", n)
	}
	mu.Unlock()
	rdb := redis.Client()
	names, err := rdb.Keys(t.Context(), "sluice:cache:e:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		body, _ := rdb.HGet(t.Context(), name, "b").Result()
		if strings.Contains(body, "account") {
			t.Errorf("Redis holds the response to a credentialed request: %s", body)
		}
	}

	redis.Stop()
	served, failed = poll(1500*time.Millisecond, nil)
	if failed != 0 || served == 0 {
		t.Errorf("with Redis down: %d served, %d failed; every instance must keep serving", served, failed)
	}
	for _, r := range fleet {
		t.Logf("%s", grepLines(r.metrics(t), "sluice_cache_fleet_total"))
	}
}

// TestCachePurge: sluice cache purge removes a host's responses under a
// path from the instance it asks and from the fleet's shared cache, and
// nothing else: the next request for a purged path reaches the upstream,
// on that instance or another, and the others are still answered from
// the cache.
func TestCachePurge(t *testing.T) {
	redis := testredis.Start(t)
	var mu sync.Mutex
	calls := map[string]int{}
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.URL.Path]++
		mu.Unlock()
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	})
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, up, "api.test")
	caPath := upCA.WritePEM(t, t.TempDir())
	fleet := startFleet(t, 2, redis.URL(), ", cache: true, timeout: 1s", fmt.Sprintf(`hosts:
  api.test:
    upstream_ca: %s
    connect_to: %s
    allow_private: true
    cache: {rules: [{path: /api/, ttl: 1h, public: true}]}
`, caPath, srv.Listener.Addr()))
	a, b := fleet[0].client(), fleet[1].client()
	called := func(path string) int { mu.Lock(); defer mu.Unlock(); return calls[path] }
	status(t, a, "https://api.test/api/x")
	status(t, a, "https://api.test/api/y")
	purge := func(args ...string) string {
		var out bytes.Buffer
		if err := Run(context.Background(), append([]string{"cache", "purge", "-c", fleet[0].cliConfig()}, args...), &out, io.Discard); err != nil {
			t.Fatalf("sluice cache purge %v: %v", args, err)
		}
		return out.String()
	}
	if got := purge("api.test", "--path", "/api/x"); got != "removed 1 cached response, and 1 from the fleet's shared cache\n" {
		t.Errorf("sluice cache purge api.test --path /api/x: %q", got)
	}
	status(t, b, "https://api.test/api/x")
	status(t, b, "https://api.test/api/y")
	status(t, a, "https://api.test/api/y")
	if called("/api/x") != 2 || called("/api/y") != 1 {
		t.Errorf("upstream calls after the purge of /api/x: x %d (want 2: it was purged), y %d (want 1: it was not)", called("/api/x"), called("/api/y"))
	}
	if got := purge("api.test"); !strings.HasPrefix(got, "removed 1 cached response, and 2 from") {
		t.Errorf("sluice cache purge api.test: %q, want instance 0's y and both shared entries", got)
	}
	if err := Run(context.Background(), []string{"cache", "purge", "-c", fleet[0].cliConfig()}, io.Discard, io.Discard); err == nil {
		t.Error("sluice cache purge without a host or --all accepted")
	}
}
