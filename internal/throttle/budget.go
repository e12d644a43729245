package throttle

import (
	"math"
	"time"
)

// meter is the arithmetic of one budget model: how much is spent now, and
// when a cost will fit. Callers hold the budget's lock.
type meter interface {
	// wait returns 0 if cost fits now, else how long until it will.
	wait(now time.Time, cost float64) time.Duration
	spend(now time.Time, cost float64)
	// sync raises the spent amount to what the upstream reports (never
	// lowers it: sluice's own count may include requests still in flight).
	sync(now time.Time, used float64)
	// capacity is the most that fits at once; available what fits now.
	capacity() float64
	available(now time.Time) float64
}

// window allows at most limit in any interval of length span, whatever its
// alignment: a fixed-window upstream (Binance's per-minute weight) is then
// never overrun, even if its clock and windows are not sluice's. Each
// spending is held span plus a guard (a twentieth of span, at most a
// second), so that requests granted in turn but delivered with different
// delays still land in different upstream windows.
type window struct {
	limit float64
	span  time.Duration
	spent []spending // oldest first
	sum   float64
}

func (w *window) hold() time.Duration { return w.span + min(w.span/20, time.Second) }

type spending struct {
	at   time.Time
	cost float64
}

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

func (w *window) wait(now time.Time, cost float64) time.Duration {
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

func (w *window) spend(now time.Time, cost float64) {
	w.spent = append(w.spent, spending{now, cost})
	w.sum += cost
}

func (w *window) sync(now time.Time, used float64) {
	w.expire(now)
	if used > w.sum {
		w.spend(now, used-w.sum)
	}
}

func (w *window) capacity() float64 { return w.limit }

func (w *window) available(now time.Time) float64 { w.expire(now); return math.Max(w.limit-w.sum, 0) }

// bucket is a token bucket of burst tokens refilled at rate per second, or
// equally a leaky bucket of that capacity leaking at that rate; level is
// what is spent.
type bucket struct {
	burst, rate float64
	level       float64
	last        time.Time
}

func (b *bucket) leak(now time.Time) {
	if !b.last.IsZero() && now.After(b.last) {
		b.level = math.Max(b.level-b.rate*now.Sub(b.last).Seconds(), 0)
	}
	b.last = now
}

func (b *bucket) wait(now time.Time, cost float64) time.Duration {
	b.leak(now)
	over := b.level + cost - b.burst
	if over <= 1e-9 {
		return 0
	}
	return time.Duration(over / b.rate * float64(time.Second))
}

func (b *bucket) spend(now time.Time, cost float64) { b.leak(now); b.level += cost }

func (b *bucket) sync(now time.Time, used float64) {
	b.leak(now)
	b.level = math.Max(b.level, used)
}

func (b *bucket) capacity() float64 { return b.burst }

func (b *bucket) available(now time.Time) float64 { b.leak(now); return math.Max(b.burst-b.level, 0) }
