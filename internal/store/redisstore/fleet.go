package redisstore

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"sluice/internal/metrics"
	"sluice/internal/store"
)

// Fleet is this instance's membership of a fleet: its Redis client, a
// heartbeat that counts the live instances, and what it falls back to
// while Redis is slow or gone: each budget's share (budget / instances
// last seen) kept here, and a ban list of its own beside the fleet's. No
// request waits on Redis longer than the timeout; the instance rejoins when
// Redis answers again.
//
// Metrics: sluice_fleet_redis_up, sluice_fleet_instances,
// sluice_fleet_fallbacks_total.
type Fleet struct {
	rdb      redis.UniversalClient
	prefix   string
	instance string
	timeout  time.Duration
	log      *slog.Logger

	down atomic.Bool
	// outages counts the times Redis stopped answering: each outage cuts
	// the local shares anew.
	outages atomic.Int64
	live    atomic.Int64
	// rejoined are called when Redis answers again after it did not.
	mu       sync.Mutex
	rejoined []func(context.Context)

	up        prometheus.Gauge
	instances prometheus.Gauge
	fallbacks prometheus.Counter
}

// heartbeat is how often an instance says it is alive; one not heard for
// three of them is gone.
const heartbeat = time.Second

// NewFleet joins the fleet at url (redis:// or rediss://) as instance;
// every Redis call is bounded by timeout. Run keeps the membership.
func NewFleet(opts *redis.Options, instance string, timeout time.Duration, log *slog.Logger, reg prometheus.Registerer) (*Fleet, error) {
	redis.SetLogger(quiet{}) // its every failed dial; the fleet logs once that Redis is gone, and when it is back
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = timeout, timeout, timeout
	opts.MaxRetries = -1 // a retry would wait longer than timeout; the fallback answers instead
	f := &Fleet{rdb: redis.NewClient(opts), prefix: "sluice:", instance: instance, timeout: timeout, log: log,
		up:        prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "fleet", Name: "redis_up", Help: "1 while the fleet's Redis answers, 0 while this instance falls back to its own share."}),
		instances: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "fleet", Name: "instances", Help: "Live instances of the fleet, as last seen."}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "fleet", Name: "fallbacks_total", Help: "Budget and ban calls answered locally because Redis did not answer in fleet.timeout."}),
	}
	f.live.Store(1)
	f.instances.Set(1)
	return f, metrics.Register(reg, f.up, f.instances, f.fallbacks)
}

// Client is the fleet's Redis client.
func (f *Fleet) Client() redis.UniversalClient { return f.rdb }

// Run beats the heartbeat and watches Redis until ctx ends.
func (f *Fleet) Run(ctx context.Context) {
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		f.beat(ctx)
		select {
		case <-ctx.Done():
			c, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.timeout)
			f.rdb.ZRem(c, f.prefix+"instances", f.instance) // leaving: the others' shares grow at once
			cancel()
			f.rdb.Close()
			return
		case <-t.C:
		}
	}
}

func (f *Fleet) beat(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	now := time.Now()
	key := f.prefix + "instances"
	var n *redis.IntCmd
	_, err := f.rdb.TxPipelined(c, func(p redis.Pipeliner) error {
		p.ZAdd(c, key, redis.Z{Score: float64(now.UnixMilli()), Member: f.instance})
		p.ZRemRangeByScore(c, key, "-inf", strconv.FormatInt(now.Add(-3*heartbeat).UnixMilli(), 10))
		n = p.ZCard(c, key)
		return nil
	})
	if err != nil {
		f.failed(err)
		return
	}
	f.live.Store(max(n.Val(), 1))
	f.instances.Set(float64(f.live.Load()))
	if f.down.Swap(false) {
		f.log.Info("fleet Redis answers again; budgets and bans are shared again", "instances", f.live.Load())
		f.mu.Lock()
		hooks := f.rejoined
		f.mu.Unlock()
		for _, h := range hooks {
			h(ctx)
		}
	}
	f.up.Set(1)
}

// failed notes that Redis did not answer: one warning, until it does again.
func (f *Fleet) failed(err error) {
	f.fallbacks.Inc()
	f.up.Set(0)
	if !f.down.Swap(true) {
		f.outages.Add(1)
		f.log.Warn("fleet Redis does not answer; each budget falls back to this instance's share, bans to its own list",
			"instances", f.live.Load(), "error", err.Error())
	}
}

// call runs op on Redis within the timeout, unless Redis is known down.
func (f *Fleet) call(ctx context.Context, op func(context.Context) error) error {
	if f.down.Load() {
		f.fallbacks.Inc()
		return errDown
	}
	c, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if err := op(c); err != nil {
		f.failed(err)
		return err
	}
	return nil
}

var errDown = errors.New("fleet Redis is down")

// Meters are the fleet's budgets, each falling back to this instance's
// share while Redis does not answer.
func (f *Fleet) Meters() store.Meters { return fleetMeters{f: f, shared: NewMeters(f.rdb, f.prefix)} }

type fleetMeters struct {
	f      *Fleet
	shared *Meters
}

func (m fleetMeters) Meter(key string, spec store.MeterSpec) store.Meter {
	return &fleetMeter{f: m.f, spec: spec, shared: m.shared.Meter(key, spec)}
}

// fleetMeter is one shared budget and, while Redis is down, its local share.
type fleetMeter struct {
	f      *Fleet
	spec   store.MeterSpec
	shared store.Meter

	mu    sync.Mutex
	local store.Meter
	share int64 // the instances the local share was cut for
	// outage is the outage it was cut in: a share left from an earlier
	// one would hold none of what the fleet spent since.
	outage int64
	// granted is what the local share let through, which Redis never
	// saw; unsettled says some is still to be added to the shared count.
	granted   []grant
	unsettled atomic.Bool
}

type grant struct {
	at   time.Time
	cost float64
}

// localTake takes from the local share and keeps what it granted.
func (m *fleetMeter) localTake(ctx context.Context, now time.Time, cost float64) (time.Duration, error) {
	d, err := m.localShare(ctx, now).Take(ctx, now, cost)
	if err == nil && d == 0 {
		m.mu.Lock()
		// Grants the upstream's window has let go of no longer count.
		old, horizon := 0, m.horizon()
		for old < len(m.granted) && now.Sub(m.granted[old].at) >= horizon {
			old++
		}
		m.granted = append(m.granted[old:], grant{now, cost})
		m.mu.Unlock()
		m.unsettled.Store(true)
	}
	return d, err
}

// horizon is how long a spending counts against the budget.
func (m *fleetMeter) horizon() time.Duration {
	if m.spec.Model == store.Bucket && m.spec.Rate > 0 {
		return time.Duration(m.spec.Limit / m.spec.Rate * float64(time.Second)) // a bucket refills whole in this time
	}
	return m.spec.Window
}

// settle adds, once Redis answers again, what the local share granted to
// the shared count, or the fleet would spend it a second time within the
// upstream's window. Each instance knows only its own grants, so it
// raises the count to its grants times the instances: the largest of
// those is at least what the fleet granted together.
func (m *fleetMeter) settle(ctx context.Context, now time.Time) error {
	if !m.unsettled.Load() {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var used float64
	horizon := m.horizon()
	for _, g := range m.granted {
		if now.Sub(g.at) < horizon {
			used += g.cost
		}
	}
	if used > 0 {
		if err := m.shared.Sync(ctx, now, used*float64(m.share)); err != nil {
			return err
		}
	}
	m.granted = nil
	m.unsettled.Store(false)
	return nil
}

// onShared runs op on the shared meter within the fleet's timeout, after
// settling what a local share granted.
func (m *fleetMeter) onShared(ctx context.Context, now time.Time, op func(context.Context) error) error {
	return m.f.call(ctx, func(c context.Context) error {
		if err := m.settle(c, now); err != nil {
			return err
		}
		return op(c)
	})
}

// localShare is the budget divided among the instances last seen, cut
// anew in every outage. A new share starts spent, as of now: what the
// fleet spent in the window before Redis went is not known here, and the
// upstream's window must not see it twice.
func (m *fleetMeter) localShare(ctx context.Context, now time.Time) store.Meter {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, outage := m.f.live.Load(), m.f.outages.Load()
	if m.local == nil || m.share != n || m.outage != outage {
		spec := m.spec
		spec.Limit = math.Max(math.Floor(spec.Limit/float64(n)), 1)
		spec.Rate /= float64(n)
		m.local, m.share, m.outage = store.MemoryMeters{}.Meter("", spec), n, outage
		m.local.Sync(ctx, now, spec.Limit)
	}
	return m.local
}

func (m *fleetMeter) Wait(ctx context.Context, now time.Time, cost float64) (d time.Duration, err error) {
	if m.onShared(ctx, now, func(c context.Context) error { d, err = m.shared.Wait(c, now, cost); return err }) != nil {
		return m.localShare(ctx, now).Wait(ctx, now, cost)
	}
	return d, nil
}

func (m *fleetMeter) Take(ctx context.Context, now time.Time, cost float64) (d time.Duration, err error) {
	if m.onShared(ctx, now, func(c context.Context) error { d, err = m.shared.Take(c, now, cost); return err }) != nil {
		return m.localTake(ctx, now, cost)
	}
	return d, nil
}

func (m *fleetMeter) Sync(ctx context.Context, now time.Time, used float64) error {
	if m.f.call(ctx, func(c context.Context) error { return m.shared.Sync(c, now, used) }) != nil {
		return m.localShare(ctx, now).Sync(ctx, now, used/float64(m.f.live.Load()))
	}
	return nil
}

func (m *fleetMeter) Reshape(ctx context.Context, capacity, rate float64) error {
	if m.f.call(ctx, func(c context.Context) error { return m.shared.Reshape(c, capacity, rate) }) != nil {
		n := float64(m.f.live.Load())
		return m.localShare(ctx, time.Now()).Reshape(ctx, capacity/n, rate/n)
	}
	return nil
}

func (m *fleetMeter) Pause(ctx context.Context, until time.Time) error {
	err := m.f.call(ctx, func(c context.Context) error { return m.shared.Pause(c, until) })
	m.mu.Lock()
	cut := m.local != nil // a share cut earlier must hold the pause too
	m.mu.Unlock()
	if cut || err != nil {
		return m.localShare(ctx, time.Now()).Pause(ctx, until)
	}
	return nil
}

func (m *fleetMeter) Available(ctx context.Context, now time.Time) (a float64, err error) {
	if m.onShared(ctx, now, func(c context.Context) error { a, err = m.shared.Available(c, now); return err }) != nil {
		return m.localShare(ctx, now).Available(ctx, now)
	}
	return a, nil
}

func (m *fleetMeter) Capacity() float64 { return m.shared.Capacity() }

// Bans are the fleet's ban list: the bans every instance sees, and while
// Redis does not answer, local (this instance's), whose bans go to the
// fleet when Redis answers again.
func (f *Fleet) Bans(ctx context.Context, local store.BanList) *FleetBans {
	b := &FleetBans{f: f, shared: OpenBans(ctx, f.rdb, f.prefix, f.log, nil), local: local}
	f.mu.Lock()
	f.rejoined = append(f.rejoined, b.upload)
	f.mu.Unlock()
	return b
}

// FleetBans is a ban list shared by the fleet, with a local fallback.
type FleetBans struct {
	f      *Fleet
	shared *Bans
	local  store.BanList
}

// Close stops following the fleet's ban changes.
func (b *FleetBans) Close() error { return b.shared.Close() }

// upload gives the fleet the bans made while Redis was gone.
func (b *FleetBans) upload(ctx context.Context) {
	list, err := b.local.List(ctx)
	if err != nil {
		return
	}
	for _, x := range list {
		if b.f.call(ctx, func(c context.Context) error { return b.shared.Add(c, x) }) == nil {
			b.local.Remove(ctx, x.Client)
		}
	}
}

func (b *FleetBans) Banned(ctx context.Context, client string) (store.Ban, bool, error) {
	if x, ok, _ := b.shared.Banned(ctx, client); ok {
		return x, true, nil
	}
	return b.local.Banned(ctx, client)
}

func (b *FleetBans) Strike(ctx context.Context, client string, window time.Duration) (n int, err error) {
	if b.f.call(ctx, func(c context.Context) error { n, err = b.shared.Strike(c, client, window); return err }) != nil {
		return b.local.Strike(ctx, client, window)
	}
	return n, nil
}

func (b *FleetBans) Add(ctx context.Context, x store.Ban) error {
	if b.f.call(ctx, func(c context.Context) error { return b.shared.Add(c, x) }) != nil {
		return b.local.Add(ctx, x)
	}
	return nil
}

func (b *FleetBans) Remove(ctx context.Context, client string) (bool, error) {
	var shared bool
	err := b.f.call(ctx, func(c context.Context) (err error) { shared, err = b.shared.Remove(c, client); return err })
	local, lerr := b.local.Remove(ctx, client)
	if err != nil && lerr != nil {
		return false, err
	}
	return shared || local, nil
}

func (b *FleetBans) List(ctx context.Context) ([]store.Ban, error) {
	var shared []store.Ban
	err := b.f.call(ctx, func(c context.Context) (err error) { shared, err = b.shared.List(c); return err })
	local, lerr := b.local.List(ctx)
	if err != nil && lerr != nil {
		return nil, err
	}
	seen := map[string]bool{}
	out := append([]store.Ban(nil), shared...)
	for _, x := range shared {
		seen[x.Client] = true
	}
	for _, x := range local {
		if !seen[x.Client] {
			out = append(out, x)
		}
	}
	slices.SortStableFunc(out, func(a, c store.Ban) int { return a.Until.Compare(c.Until) })
	return out, nil
}

// quiet drops go-redis's own log lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
