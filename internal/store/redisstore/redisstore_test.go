package redisstore

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/store"
	"sluice/internal/store/storetest"
	"sluice/internal/testredis"
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
