package store

import (
	"context"
	"math"
	"sync"
	"time"
)

// MemoryMeters keeps every meter in this process.
type MemoryMeters struct{}

var _ Meters = MemoryMeters{}

// Meter returns a new in-memory meter; the caller keeps it for its key.
func (MemoryMeters) Meter(_ string, spec MeterSpec) Meter {
	if spec.Model == Bucket {
		return &bucket{burst: spec.Limit, rate: spec.Rate}
	}
	return &window{limit: spec.Limit, span: spec.Window}
}

// window allows at most limit in any interval of length span, whatever its
// alignment: a fixed-window upstream (Binance's per-minute weight) is then
// never overrun, even if its clock and windows are not sluice's. Each
// spending is held span plus a guard (a twentieth of span, at most a
// second), so that requests granted in turn but delivered with different
// delays still land in different upstream windows.
type window struct {
	mu     sync.Mutex
	paused pause
	limit  float64
	span   time.Duration
	spent  []spending // oldest first
	sum    float64
}

type spending struct {
	at   time.Time
	cost float64
}

func (w *window) hold() time.Duration { return w.span + min(w.span/20, time.Second) }

func (w *window) expire(now time.Time) {
	i := 0
	for ; i < len(w.spent) && !now.Before(w.spent[i].at.Add(w.hold())); i++ {
		w.sum -= w.spent[i].cost
	}
	if i > 0 {
		w.spent = append(w.spent[:0], w.spent[i:]...)
	}
	if len(w.spent) == 0 {
		w.sum = 0 // no float drift across windows
	}
}

func (w *window) waitLocked(now time.Time, cost float64) time.Duration {
	if d := w.paused.left(now); d > 0 {
		return d
	}
	w.expire(now)
	over := w.sum + cost - w.limit
	if over <= 0 {
		return 0
	}
	for _, s := range w.spent {
		if over -= s.cost; over <= 1e-9 {
			return s.at.Add(w.hold()).Sub(now)
		}
	}
	return w.hold()
}

func (w *window) Wait(_ context.Context, now time.Time, cost float64) (time.Duration, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.waitLocked(now, cost), nil
}

func (w *window) Take(_ context.Context, now time.Time, cost float64) (time.Duration, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d := w.waitLocked(now, cost); d > 0 {
		return d, nil
	}
	w.spent = append(w.spent, spending{now, cost})
	w.sum += cost
	return 0, nil
}

func (w *window) Sync(_ context.Context, now time.Time, used float64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expire(now)
	if used > w.sum {
		w.spent = append(w.spent, spending{now, used - w.sum})
		w.sum = used
	}
	return nil
}

// Reshape sets the window's limit to capacity, as the upstream reports
// its plan (Etsy's x-limit-per-day); a window has no rate.
func (w *window) Reshape(_ context.Context, capacity, _ float64) error {
	if capacity > 0 {
		w.mu.Lock()
		w.limit = capacity
		w.mu.Unlock()
	}
	return nil
}

func (w *window) Pause(_ context.Context, until time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.paused.extend(until)
	return nil
}

func (w *window) Available(_ context.Context, now time.Time) (float64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expire(now)
	return math.Max(w.limit-w.sum, 0), nil
}

func (w *window) Capacity() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.limit
}

// bucket is a token bucket of burst tokens refilled at rate per second, or
// equally a leaky bucket of that capacity leaking at that rate; level is
// what is spent.
type bucket struct {
	mu          sync.Mutex
	burst, rate float64
	level       float64
	last        time.Time
	paused      pause
}

func (b *bucket) leak(now time.Time) {
	if !b.last.IsZero() && now.After(b.last) {
		b.level = math.Max(b.level-b.rate*now.Sub(b.last).Seconds(), 0)
	}
	if now.After(b.last) {
		b.last = now
	}
}

func (b *bucket) waitLocked(now time.Time, cost float64) time.Duration {
	if d := b.paused.left(now); d > 0 {
		return d
	}
	b.leak(now)
	over := b.level + cost - b.burst
	if over <= 1e-9 {
		return 0
	}
	return time.Duration(over / b.rate * float64(time.Second))
}

func (b *bucket) Wait(_ context.Context, now time.Time, cost float64) (time.Duration, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waitLocked(now, cost), nil
}

func (b *bucket) Take(_ context.Context, now time.Time, cost float64) (time.Duration, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := b.waitLocked(now, cost); d > 0 {
		return d, nil
	}
	b.level += cost
	return 0, nil
}

func (b *bucket) Sync(_ context.Context, now time.Time, used float64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leak(now)
	b.level = math.Max(b.level, used)
	return nil
}

func (b *bucket) Reshape(_ context.Context, capacity, rate float64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if capacity > 0 {
		b.burst = capacity
	}
	if rate > 0 {
		b.rate = rate
	}
	return nil
}

func (b *bucket) Pause(_ context.Context, until time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.paused.extend(until)
	return nil
}

func (b *bucket) Available(_ context.Context, now time.Time) (float64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leak(now)
	return math.Max(b.burst-b.level, 0), nil
}

func (b *bucket) Capacity() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.burst
}

// pause holds a meter's spendings until its end; the meter's mutex guards it.
type pause struct{ until time.Time }

// extend makes the pause last until until, if that is later.
func (p *pause) extend(until time.Time) {
	if until.After(p.until) {
		p.until = until
	}
}

// left is what is left of the pause at now.
func (p *pause) left(now time.Time) time.Duration {
	if now.Before(p.until) {
		return p.until.Sub(now)
	}
	return 0
}
