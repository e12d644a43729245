package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/cache"
	"sluice/internal/store"
	"sluice/internal/store/storetest"
	"sluice/internal/testenv"
	"sluice/internal/testredis"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// TestMeters: the Redis meters pass the contract the in-memory ones do.
func TestMeters(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client()
	var n atomic.Int64
	storetest.Meters(t, func(*testing.T) store.Meters {
		return NewMeters(rdb, fmt.Sprintf("test%d:", n.Add(1))) // a fresh prefix: a fresh store
	})
}

// TestBans: the Redis ban list passes the contract the in-memory one does.
func TestBans(t *testing.T) {
	srv := testredis.Start(t)
	rdb := srv.Client()
	var n atomic.Int64
	storetest.BanList(t, func(t *testing.T, now func() time.Time) store.BanList {
		b := OpenBans(t.Context(), rdb, fmt.Sprintf("test%d:", n.Add(1)), slog.New(slog.DiscardHandler), now)
		t.Cleanup(func() { b.Close() })
		return b
	})
}

// TestFleetShares: two instances' meters and ban lists over one Redis are
// one budget, one pause and one ban list; a ban on one holds on the other within a
// second, and how long it took is logged.
func TestFleetShares(t *testing.T) {
	srv := testredis.Start(t)
	a, b := NewMeters(srv.Client(), "fleet:"), NewMeters(srv.Client(), "fleet:")
	spec := store.MeterSpec{Model: store.Window, Limit: 10, Window: time.Minute}
	ma, mb := a.Meter("binance", spec), b.Meter("binance", spec)
	now := time.Now()
	granted := 0
	for i := range 20 {
		m := ma
		if i%2 == 1 {
			m = mb
		}
		if d, err := m.Take(t.Context(), now, 1); err == nil && d == 0 {
			granted++
		}
	}
	if granted != 10 {
		t.Errorf("two instances granted %d of a shared budget of 10", granted)
	}
	// A 418 seen by one instance pauses the other.
	other := b.Meter("bybit", spec)
	if err := a.Meter("bybit", spec).Pause(t.Context(), now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if d, err := other.Take(t.Context(), now, 1); err != nil || d != 2*time.Minute {
		t.Errorf("the other instance's Take during the pause: wait %v, %v; want the 2 minutes", d, err)
	}
	la := OpenBans(t.Context(), srv.Client(), "fleet:", slog.New(slog.DiscardHandler), nil)
	defer la.Close()
	lb := OpenBans(t.Context(), srv.Client(), "fleet:", slog.New(slog.DiscardHandler), nil)
	defer lb.Close()
	// Strikes count across instances.
	la.Strike(t.Context(), "198.51.100.7", time.Minute)
	if n, err := lb.Strike(t.Context(), "198.51.100.7", time.Minute); err != nil || n != 2 {
		t.Errorf("a strike on each of two instances counts %d (%v), want 2", n, err)
	}
	start := time.Now()
	la.Add(t.Context(), store.Ban{Client: "203.0.113.5", Until: start.Add(time.Hour), Reason: "test"})
	for time.Since(start) < time.Second {
		if _, ok, _ := lb.Banned(t.Context(), "203.0.113.5"); ok {
			t.Logf("ban propagated in %v", time.Since(start))
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Error("a ban on one instance did not hold on the other within 1 s")
}

// TestFleetSync: the quota an upstream reports to one instance is what
// every instance's meter counts from.
func TestFleetSync(t *testing.T) {
	srv := testredis.Start(t)
	spec := store.MeterSpec{Model: store.Window, Limit: 1200, Window: time.Minute}
	a := NewMeters(srv.Client(), "fleet:").Meter("binance", spec)
	b := NewMeters(srv.Client(), "fleet:").Meter("binance", spec)
	now := time.Now()
	if err := a.Sync(t.Context(), now, 1000); err != nil { // X-MBX-USED-WEIGHT-1M: 1000, seen by a
		t.Fatal(err)
	}
	if avail, err := b.Available(t.Context(), now); err != nil || avail != 200 {
		t.Errorf("after a synced 1000 of 1200, b has %v available (%v), want 200", avail, err)
	}
}

func newTestFleet(t *testing.T, srv *testredis.Server, instance string, reg *prometheus.Registry) *Fleet {
	t.Helper()
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFleet(opts, instance, time.Second, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.rdb.Close() })
	return f
}

// TestFleetCacheClaims: one instance at a time fills a key; another waits
// for its fill and gets it when it is stored, or nothing when the fill
// stored nothing; a response looked up later has what is left of its TTL.
func TestFleetCacheClaims(t *testing.T) {
	srv := testredis.Start(t)
	open := func(name string) *Cache {
		c, err := newTestFleet(t, srv, name, prometheus.NewRegistry()).Cache(t.Context(), 1<<20, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := open("a"), open("b")
	ctx := t.Context()
	if resp, claimed, err := a.Lookup(ctx, "GET api.test/x", 5*time.Second); err != nil || resp != nil || !claimed {
		t.Fatalf("first lookup: %v, claimed %v, %v; want the claim", resp, claimed, err)
	}
	if resp, claimed, err := b.Lookup(ctx, "GET api.test/x", 5*time.Second); err != nil || resp != nil || claimed {
		t.Fatalf("second instance's lookup: %v, claimed %v, %v; want no claim", resp, claimed, err)
	}
	got := make(chan *cache.SharedResponse)
	go func() {
		resp, err := b.Await(ctx, "GET api.test/x", 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- resp
	}()
	waitAwaiting(t, b, "GET api.test/x")
	want := &cache.SharedResponse{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"p":1}`), Fresh: 2 * time.Second}
	if err := a.Store(ctx, "GET api.test/x", want); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-got:
		if resp == nil || resp.Status != 200 || string(resp.Body) != `{"p":1}` || resp.Header.Get("Content-Type") != "application/json" || resp.Fresh > 2*time.Second || resp.Fresh < time.Second {
			t.Errorf("the waiter got %+v", resp)
		}
	case <-time.After(time.Second): // its poll alone would answer in 100 ms; the announcement at once
		t.Fatal("the waiter did not get the stored fill within 1 s")
	}

	a.Lookup(ctx, "GET api.test/y", 5*time.Second)
	go func() {
		resp, _ := b.Await(ctx, "GET api.test/y", 5*time.Second)
		got <- resp
	}()
	waitAwaiting(t, b, "GET api.test/y")
	a.Release(ctx, "GET api.test/y")
	select {
	case resp := <-got:
		if resp != nil {
			t.Errorf("a released fill gave the waiter %+v", resp)
		}
	case <-time.After(time.Second):
		t.Fatal("the waiter still waits 1 s after the fill was released")
	}
}

// TestFleetCacheBound: the fleet cache stays within its bytes, evicting
// the entries nearest their expiry first, and keeps no URL in Redis.
func TestFleetCacheBound(t *testing.T) {
	srv := testredis.Start(t)
	reg := prometheus.NewRegistry()
	c, err := newTestFleet(t, srv, "a", prometheus.NewRegistry()).Cache(t.Context(), 16<<10, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, 1000)
	for i := range 40 {
		resp := &cache.SharedResponse{Status: 200, Header: http.Header{}, Body: body, Fresh: time.Duration(i+1) * time.Minute}
		if err := c.Store(t.Context(), fmt.Sprintf("GET api.test/secret-path/%d", i), resp); err != nil {
			t.Fatal(err)
		}
	}
	rdb := srv.Client()
	total, err := rdb.Get(t.Context(), "sluice:cache:bytes").Int64()
	if err != nil || total > 16<<10 {
		t.Errorf("the fleet cache holds %d bytes (%v), bound 16384", total, err)
	}
	if n := testutil.ToFloat64(c.evictions); n < 20 {
		t.Errorf("%v evictions counted for 40 entries of 1 KB in 16 KB", n)
	}
	for i, want := range map[int]bool{0: false, 39: true} {
		resp, _, _ := c.Lookup(t.Context(), fmt.Sprintf("GET api.test/secret-path/%d", i), time.Second)
		if (resp != nil) != want {
			t.Errorf("entry %d (TTL %d min) kept: %v, want %v", i, i+1, resp != nil, want)
		}
	}
	keys, _ := rdb.Keys(t.Context(), "*").Result()
	for _, k := range keys {
		if strings.Contains(k, "secret-path") {
			t.Errorf("Redis key %q names a URL", k)
		}
	}
}

// TestFleetSlowRedis: while Redis is blocked (DEBUG SLEEP), a budget
// answers from this instance's share within the fleet timeout instead of
// waiting for Redis, and the instance rejoins once Redis answers.
func TestFleetSlowRedis(t *testing.T) {
	srv := testredis.Start(t)
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFleet(opts, "a", 100*time.Millisecond, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	m := f.Meters().Meter("binance", store.MeterSpec{Model: store.Bucket, Limit: 10, Rate: 10})
	if d, err := m.Take(t.Context(), time.Now(), 1); err != nil || d != 0 {
		t.Fatalf("take with Redis up: %v, %v", d, err)
	}
	blocked := make(chan error, 1)
	go func() { blocked <- srv.Client().Do(context.Background(), "DEBUG", "SLEEP", "2").Err() }()
	// The sleep has begun once Redis stops answering.
	probe := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", srv.Port), ReadTimeout: 50 * time.Millisecond, MaxRetries: -1})
	defer probe.Close()
	testenv.WaitFor(t, 2*time.Second, "Redis to sleep", func() bool { return probe.Ping(t.Context()).Err() != nil })
	start := time.Now()
	_, err = m.Take(t.Context(), start, 1)
	if took := time.Since(start); err != nil || took > time.Second {
		t.Errorf("take while Redis sleeps 2 s: %v after %v; want the local share's answer within the 100 ms timeout", err, took)
	}
	if testutil.ToFloat64(f.up) != 0 {
		t.Error("sluice_fleet_redis_up is not 0 while Redis does not answer")
	}
	if err := <-blocked; err != nil {
		t.Fatalf("DEBUG SLEEP: %v", err)
	}
	testenv.WaitFor(t, 5*time.Second, "the fleet to rejoin after Redis woke", func() bool { return testutil.ToFloat64(f.up) == 1 })
}

// TestFleetShareEachOutage: every outage cuts the local share anew, spent
// as of its start. A share left from an earlier outage had refilled, and
// spending it at once on top of what the fleet spent just before Redis
// went again overran the upstream (TestFleetBudget in CI: 6 429s, one
// instance's share).
func TestFleetShareEachOutage(t *testing.T) {
	srv := testredis.Start(t)
	f := newTestFleet(t, srv, "a", prometheus.NewRegistry())
	m := f.Meters().Meter("binance", store.MeterSpec{Model: store.Window, Limit: 20, Window: 5 * time.Second})
	now := time.Now()
	for outage := range 2 {
		srv.Stop()
		if d, err := m.Take(t.Context(), now, 1); err != nil || d == 0 {
			t.Errorf("outage %d: the first take of a new local share waits %v (%v); want it spent, a wait", outage+1, d, err)
		}
		srv.Restart()
		f.beat(t.Context())
		if f.down.Load() {
			t.Fatal("the heartbeat after Redis restarted did not rejoin")
		}
		now = now.Add(10 * time.Second) // two windows later: an old share would be whole again
	}
}

// TestFleetShareSettles: what an instance's local share granted while
// Redis was down is counted in the shared budget when Redis answers again,
// as its grants times the instances (each knows only its own), so that the
// fleet does not spend it a second time within the upstream's window.
func TestFleetShareSettles(t *testing.T) {
	srv := testredis.Start(t)
	f := newTestFleet(t, srv, "a", prometheus.NewRegistry())
	f.live.Store(3)
	m := f.Meters().Meter("binance", store.MeterSpec{Model: store.Window, Limit: 30, Window: time.Minute})
	start := time.Now()
	srv.Stop()
	m.Take(t.Context(), start, 1) // cuts the share of 10, spent as of start
	now := start.Add(time.Minute + time.Second)
	for i := range 4 {
		if d, err := m.Take(t.Context(), now, 1); err != nil || d != 0 {
			t.Fatalf("take %d from the refilled local share: wait %v, %v", i+1, d, err)
		}
	}
	srv.Restart()
	f.beat(t.Context())
	if avail, err := m.Available(t.Context(), now); err != nil || avail != 30-3*4 {
		t.Errorf("after Redis returned, the shared budget has %v of 30 available (%v); want 18: the 4 local grants times 3 instances", avail, err)
	}
	if avail, err := m.Available(t.Context(), now.Add(2*time.Minute)); err != nil || avail != 30 {
		t.Errorf("a window later the shared budget has %v available (%v), want all 30: the grants were settled once", avail, err)
	}
}

// waitAwaiting waits until c has a waiter on key: Await registers before
// it looks, so what comes after is announced to it, not found by a look.
func waitAwaiting(t *testing.T, c *Cache, key string) {
	t.Helper()
	name := c.name(key)
	testenv.WaitFor(t, 5*time.Second, "a waiter on "+key, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.waiters[name]) > 0
	})
}
