package throttle

import (
	"context"
	"errors"
	"sluice/internal/store"
	"sync"
	"time"
)

// instance is one budget (one key of one named budget) with its queue.
// Waiters queue per client, and clients take turns, so one busy bot cannot
// starve the others; within a client the order is FIFO. Its own lock, not
// the Limiter's, guards it and is held for the meter's calls: a slow meter
// delays one budget, never the others.
type instance struct {
	mu   sync.Mutex
	l    *Limiter
	key  string // in Limiter.instances
	name string
	m    store.Meter
	// pausedUntil holds every request after an upstream 429 or 418.
	pausedUntil time.Time
	// gaugeAt is when the available gauge was last set, driftAt the drift gauge.
	gaugeAt, driftAt time.Time
	backoff          time.Duration
	// Until the upstream has reported its count once (synced), one request
	// at a time goes out (probing): others outside sluice may have spent
	// part of the budget already, and a burst could overrun it.
	needsSync, synced, probing bool

	clients map[string]*clientQueue
	ring    []*clientQueue // clients with waiters, in turn order
	next    int
	waiting int
	timer   *time.Timer
	lastUse time.Time
}

type clientQueue struct {
	id      string
	waiters []*waiter
}

type waiter struct {
	cost    float64
	client  string
	ready   chan struct{}
	granted bool
}

// ErrTimeout is returned when a request waited max_wait without budget.
var ErrTimeout = errors.New("no upstream budget within max_wait")

// acquire spends cost for client, queueing until it fits. It returns how
// long it waited.
func (in *instance) acquire(ctx context.Context, client string, cost float64, maxWait time.Duration) (time.Duration, error) {
	l := in.l
	start := l.now()
	cost = min(cost, in.m.Capacity()) // a cost the budget can never hold would wait forever
	in.mu.Lock()
	in.lastUse = start
	if d := in.pausedUntil.Sub(start); d > maxWait {
		in.mu.Unlock()
		return 0, ErrTimeout // paused past max_wait: waiting would only delay the same answer
	}
	if in.waiting == 0 && !start.Before(in.pausedUntil) && in.ready() {
		switch d := in.take(start, cost); {
		case d == 0:
			in.mu.Unlock()
			return 0, nil
		case d > maxWait:
			in.mu.Unlock()
			return 0, ErrTimeout // a day's budget spent: no wait within max_wait can bring it
		}
	}
	w := &waiter{cost: cost, client: client, ready: make(chan struct{})}
	in.enqueue(w)
	in.dispatch(start)
	in.mu.Unlock()

	timeout := time.NewTimer(maxWait)
	defer timeout.Stop()
	var err error
	select {
	case <-w.ready:
		return l.now().Sub(start), nil
	case <-timeout.C:
		err = ErrTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if w.granted { // granted as we gave up: the budget is spent, use it
		return l.now().Sub(start), nil
	}
	in.remove(w)
	in.dispatch(l.now())
	return l.now().Sub(start), err
}

func (in *instance) enqueue(w *waiter) {
	q := in.clients[w.client]
	if q == nil {
		q = &clientQueue{id: w.client}
		in.clients[w.client] = q
	}
	if len(q.waiters) == 0 {
		in.ring = append(in.ring, q)
	}
	q.waiters = append(q.waiters, w)
	in.waiting++
	in.l.metrics.queued(in.name, 1)
}

func (in *instance) remove(w *waiter) {
	q := in.clients[w.client]
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			in.waiting--
			in.l.metrics.queued(in.name, -1)
			break
		}
	}
	if len(q.waiters) == 0 {
		in.dropClient(q)
	}
}

func (in *instance) dropClient(q *clientQueue) {
	delete(in.clients, q.id)
	for i, x := range in.ring {
		if x == q {
			in.ring = append(in.ring[:i], in.ring[i+1:]...)
			if in.next > i {
				in.next--
			}
			break
		}
	}
	if in.next >= len(in.ring) {
		in.next = 0
	}
}

// dispatch grants queued waiters, clients in turn, while the budget
// allows, and arms a timer for when the next one will fit. Called with the
// lock held.
func (in *instance) dispatch(now time.Time) {
	if in.timer != nil {
		in.timer.Stop()
		in.timer = nil
	}
	for len(in.ring) > 0 {
		if now.Before(in.pausedUntil) {
			in.arm(in.pausedUntil.Sub(now))
			return
		}
		if !in.ready() {
			return // the probe's answer dispatches again
		}
		q := in.ring[in.next]
		w := q.waiters[0]
		if d := in.take(now, w.cost); d > 0 {
			in.arm(d)
			return
		}
		w.granted = true
		close(w.ready)
		q.waiters = q.waiters[1:]
		in.waiting--
		in.l.metrics.queued(in.name, -1)
		if len(q.waiters) == 0 {
			in.dropClient(q)
		} else {
			in.next = (in.next + 1) % len(in.ring)
		}
	}
}

func (in *instance) arm(d time.Duration) {
	in.timer = time.AfterFunc(d, func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		in.dispatch(in.l.now())
	})
}

// ready reports whether a request may go out now as far as syncing goes.
func (in *instance) ready() bool { return !in.needsSync || in.synced || !in.probing }

// meterRetry is how soon a meter that failed is asked again.
const meterRetry = 100 * time.Millisecond

// take spends cost if it fits now and returns 0, else how long until it
// will; a spending before the upstream reported its count is the probe.
func (in *instance) take(now time.Time, cost float64) time.Duration {
	d, err := in.m.Take(in.l.ctx, now, cost)
	if err != nil {
		in.l.log.Warn("budget meter failed", "budget", in.name, "error", err.Error())
		return meterRetry
	}
	if d == 0 && in.needsSync && !in.synced {
		in.probing = true
	}
	return d
}

// sync raises the budget's spent count to what the upstream reports used,
// and, at most every gaugeEvery, sets the drift gauge to how far sluice's
// own count was from it: a budget model that drifts shows before the
// upstream refuses.
func (in *instance) sync(now time.Time, used float64) {
	if in.driftAt.IsZero() || now.Sub(in.driftAt) >= gaugeEvery {
		in.driftAt = now
		in.l.metrics.drifted(in.name, in.m.Capacity()-in.available(now)-used)
	}
	if err := in.m.Sync(in.l.ctx, now, used); err != nil {
		in.l.log.Warn("budget meter not synced", "budget", in.name, "error", err.Error())
	}
}

func (in *instance) pause(until time.Time) {
	if err := in.m.Pause(in.l.ctx, until); err != nil {
		in.l.log.Warn("budget meter not paused", "budget", in.name, "error", err.Error())
	}
}

func (in *instance) reshape(capacity, rate float64) {
	if err := in.m.Reshape(in.l.ctx, capacity, rate); err != nil {
		in.l.log.Warn("budget meter not reshaped", "budget", in.name, "error", err.Error())
	}
}

// gaugeEvery is how often the available gauge is read from the meter: a
// shared meter's every read is a round trip to Redis.
const gaugeEvery = 250 * time.Millisecond

// report sets the budget's available gauge, at most every gaugeEvery.
func (in *instance) report(now time.Time) {
	if !in.gaugeAt.IsZero() && now.Sub(in.gaugeAt) < gaugeEvery {
		return
	}
	in.gaugeAt = now
	in.l.metrics.available(in.name, in.available(now))
}

func (in *instance) available(now time.Time) float64 {
	a, _ := in.m.Available(in.l.ctx, now) // a metric: a failure shows as 0
	return a
}

// idle reports whether no request waits on the instance, so that it may be evicted.
func (in *instance) idle() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.waiting == 0 && in.timer == nil
}
