// Package storetest is the contract every implementation of the store
// interfaces must pass: the in-memory ones always, a shared one (Redis)
// when its server is at hand.
package storetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"sluice/internal/store"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// Meters runs the meter contract on the Meters newMeters returns (a fresh
// one, holding no budget, each call).
func Meters(t *testing.T, newMeters func(t *testing.T) store.Meters) {
	ctx := context.Background()
	window := func(t *testing.T, limit float64, span time.Duration) store.Meter {
		return newMeters(t).Meter(t.Name(), store.MeterSpec{Model: store.Window, Limit: limit, Window: span})
	}
	bucket := func(t *testing.T, burst, rate float64) store.Meter {
		return newMeters(t).Meter(t.Name(), store.MeterSpec{Model: store.Bucket, Limit: burst, Rate: rate})
	}
	// must returns the wait of a meter call, failing t on an error.
	must := func(t *testing.T) func(time.Duration, error) time.Duration {
		return func(d time.Duration, err error) time.Duration {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
	}

	t.Run("window never exceeds its limit in any interval", func(t *testing.T) {
		m := window(t, 10, time.Second)
		var granted []time.Time
		for now := t0; now.Before(t0.Add(5 * time.Second)); now = now.Add(37 * time.Millisecond) {
			if must(t)(m.Take(ctx, now, 1)) == 0 {
				granted = append(granted, now)
			}
		}
		for i := range granted { // every one-second interval starting at a grant
			n := 0
			for _, g := range granted[i:] {
				if g.Before(granted[i].Add(time.Second)) {
					n++
				}
			}
			if n > 10 {
				t.Fatalf("%d grants within one second of %v, limit 10", n, granted[i])
			}
		}
		if len(granted) < 45 {
			t.Errorf("%d grants in 5 s at 10/s, want close to 50", len(granted))
		}
	})

	t.Run("take is atomic", func(t *testing.T) {
		for _, m := range []store.Meter{window(t, 50, time.Minute), bucket(t, 50, 0.001)} {
			var mu sync.Mutex
			granted := 0
			var wg sync.WaitGroup
			for range 200 {
				wg.Go(func() {
					if d, err := m.Take(ctx, t0, 1); err == nil && d == 0 {
						mu.Lock()
						granted++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if granted != 50 {
				t.Errorf("%T: 200 concurrent takes of a budget of 50 granted %d", m, granted)
			}
		}
	})

	t.Run("wait spends nothing and says when a cost fits", func(t *testing.T) {
		m := window(t, 3, time.Minute)
		for range 3 {
			must(t)(m.Take(ctx, t0, 1))
		}
		d := must(t)(m.Wait(ctx, t0.Add(time.Second), 1))
		if d <= 0 || d > time.Minute+time.Second {
			t.Errorf("Wait on a full window = %v, want about the rest of the window", d)
		}
		if d2 := must(t)(m.Wait(ctx, t0.Add(time.Second), 1)); d2 != d {
			t.Errorf("a second Wait = %v, want %v: Wait must not spend", d2, d)
		}
		if a, _ := m.Available(ctx, t0.Add(2*time.Minute)); a != 3 {
			t.Errorf("after the window: %v available, want 3", a)
		}
	})

	t.Run("sync raises the count and never lowers it", func(t *testing.T) {
		m := window(t, 100, time.Minute)
		must(t)(m.Take(ctx, t0, 10))
		if err := m.Sync(ctx, t0, 90); err != nil {
			t.Fatal(err)
		}
		if a, _ := m.Available(ctx, t0); a != 10 {
			t.Errorf("after Sync(90): %v available, want 10", a)
		}
		if err := m.Sync(ctx, t0, 5); err != nil {
			t.Fatal(err)
		}
		if a, _ := m.Available(ctx, t0); a != 10 {
			t.Errorf("after Sync(5) below the count: %v available, want still 10", a)
		}
		if m.Capacity() != 100 {
			t.Errorf("Capacity = %v, want 100", m.Capacity())
		}
	})

	t.Run("bucket refills at its rate and reshapes", func(t *testing.T) {
		m := bucket(t, 40, 2)
		if d := must(t)(m.Take(ctx, t0, 40)); d != 0 {
			t.Fatalf("taking the whole burst: wait %v", d)
		}
		if d := must(t)(m.Take(ctx, t0, 1)); d != 500*time.Millisecond {
			t.Errorf("one more at once: wait %v, want 500ms at 2/s", d)
		}
		if d := must(t)(m.Take(ctx, t0.Add(time.Second), 2)); d != 0 {
			t.Errorf("two after a second at 2/s: wait %v, want 0", d)
		}
		if err := m.Reshape(ctx, 80, 4); err != nil {
			t.Fatal(err)
		}
		if m.Capacity() != 80 {
			t.Errorf("Capacity after Reshape(80, 4) = %v", m.Capacity())
		}
		if a, _ := m.Available(ctx, t0.Add(2*time.Second)); a != 44 {
			t.Errorf("after Reshape: %v available, want 44 (80 less 40 spent, 4 leaked)", a)
		}
	})

	t.Run("a window reshapes to the limit the upstream reports", func(t *testing.T) {
		m := window(t, 10, time.Minute)
		if d := must(t)(m.Take(ctx, t0, 10)); d != 0 {
			t.Fatalf("taking the whole window: wait %v", d)
		}
		if err := m.Reshape(ctx, 30, 0); err != nil {
			t.Fatal(err)
		}
		if m.Capacity() != 30 {
			t.Errorf("Capacity after Reshape(30, 0) = %v", m.Capacity())
		}
		if a, _ := m.Available(ctx, t0); a != 20 {
			t.Errorf("after Reshape(30, 0): %v available, want 20 (30 less 10 spent)", a)
		}
	})

	t.Run("a pause holds every spending until its end", func(t *testing.T) {
		for _, m := range []store.Meter{window(t, 10, time.Minute), bucket(t, 10, 1)} {
			if err := m.Pause(ctx, t0.Add(5*time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := m.Pause(ctx, t0.Add(2*time.Second)); err != nil { // a shorter one does not cut it
				t.Fatal(err)
			}
			if d := must(t)(m.Take(ctx, t0.Add(time.Second), 1)); d != 4*time.Second {
				t.Errorf("%T: Take a second into a 5 s pause: wait %v, want 4s", m, d)
			}
			if d := must(t)(m.Wait(ctx, t0.Add(3*time.Second), 1)); d != 2*time.Second {
				t.Errorf("%T: Wait 3 s into the pause: %v, want 2s", m, d)
			}
			if d := must(t)(m.Take(ctx, t0.Add(5*time.Second), 1)); d != 0 {
				t.Errorf("%T: Take at the pause's end: wait %v", m, d)
			}
		}
	})

	t.Run("meters of different keys are apart", func(t *testing.T) {
		ms := newMeters(t)
		spec := store.MeterSpec{Model: store.Window, Limit: 1, Window: time.Minute}
		a, b := ms.Meter(t.Name()+"/a", spec), ms.Meter(t.Name()+"/b", spec)
		must(t)(a.Take(ctx, t0, 1))
		if d := must(t)(b.Take(ctx, t0, 1)); d != 0 {
			t.Errorf("b waits %v after a spent its own budget", d)
		}
	})
}

// BanList runs the ban-list contract on the list newList returns (a fresh,
// empty one each call, on the clock now).
func BanList(t *testing.T, newList func(t *testing.T, now func() time.Time) store.BanList) {
	ctx := context.Background()
	t.Run("ban, expiry and lift", func(t *testing.T) {
		now := t0
		l := newList(t, func() time.Time { return now })
		if _, ok, err := l.Banned(ctx, "192.0.2.1"); ok || err != nil {
			t.Fatalf("Banned on an empty list = %v, %v", ok, err)
		}
		for _, b := range []store.Ban{{Client: "192.0.2.1", Until: t0.Add(time.Hour), Reason: "a"}, {Client: "192.0.2.2", Until: t0.Add(time.Minute), Reason: "b"}} {
			if err := l.Add(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		if b, ok, _ := l.Banned(ctx, "192.0.2.1"); !ok || b.Reason != "a" || !b.Until.Equal(t0.Add(time.Hour)) {
			t.Errorf("Banned(192.0.2.1) = %+v, %v", b, ok)
		}
		list, _ := l.List(ctx)
		if len(list) != 2 || list[0].Client != "192.0.2.2" {
			t.Errorf("List = %+v, want both, the soonest to end first", list)
		}
		now = t0.Add(2 * time.Minute)
		if _, ok, _ := l.Banned(ctx, "192.0.2.2"); ok {
			t.Error("a ban is in force after its end")
		}
		if list, _ := l.List(ctx); len(list) != 1 {
			t.Errorf("List after one ban ended = %+v", list)
		}
		if lifted, err := l.Remove(ctx, "192.0.2.1"); !lifted || err != nil {
			t.Errorf("Remove = %v, %v", lifted, err)
		}
		if lifted, _ := l.Remove(ctx, "192.0.2.1"); lifted {
			t.Error("Remove of a lifted ban reports one")
		}
		if _, ok, _ := l.Banned(ctx, "192.0.2.1"); ok {
			t.Error("banned after Remove")
		}
	})

	t.Run("strikes count within their window", func(t *testing.T) {
		now := t0
		l := newList(t, func() time.Time { return now })
		for i, want := range []int{1, 2, 3} {
			if n, err := l.Strike(ctx, "198.51.100.1", time.Minute); n != want || err != nil {
				t.Fatalf("strike %d: count %d, %v; want %d", i+1, n, err, want)
			}
		}
		if n, _ := l.Strike(ctx, "198.51.100.2", time.Minute); n != 1 {
			t.Errorf("another client's first strike counts %d", n)
		}
		now = t0.Add(90 * time.Second)
		if n, _ := l.Strike(ctx, "198.51.100.1", time.Minute); n != 1 {
			t.Errorf("a strike after the window counts %d, want 1", n)
		}
		l.Add(ctx, store.Ban{Client: "198.51.100.1", Until: now.Add(time.Hour)})
		l.Remove(ctx, "198.51.100.1")
		if n, _ := l.Strike(ctx, "198.51.100.1", time.Minute); n != 1 {
			t.Errorf("after a ban and its lifting the strikes count %d, want a fresh 1", n)
		}
	})
}
