package app

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/testpki"
	"sluice/internal/testredis"
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
// still overruns nothing, and rejoins when Redis is back.
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
	start := time.Now()
	load(11 * time.Second)
	windows := int(time.Since(start) / (5 * time.Second)) // whole windows the load ran
	if up.denied.Load() != 0 {
		t.Errorf("the upstream answered 429 %d times: the fleet overran the shared budget", up.denied.Load())
	}
	if got, budget := up.accepted.Load(), int64(20*windows); got*100 < budget*95 {
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
			resp, err := http.Get("http://" + r.addrs["admin"] + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if body = string(b); strings.Contains(body, "sluice_fleet_redis_up 1") && strings.Contains(body, "sluice_fleet_instances 3") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !strings.Contains(body, "sluice_fleet_redis_up 1") || !strings.Contains(body, "sluice_fleet_instances 3") {
			t.Errorf("an instance 5 s after Redis returned: fleet metrics\n%s", grepLines(body, "sluice_fleet_"))
		}
	}
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
