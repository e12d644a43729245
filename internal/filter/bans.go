package filter

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
	"sluice/internal/store"
)

// Bans bans the clients that cross a rule set's threshold of violations,
// and counts what it refuses. The bans and the counts are kept in a
// store.BanList (this process's, or later a fleet's). It is safe for
// concurrent use.
type Bans struct {
	list store.BanList
	log  *slog.Logger
	now  func() time.Time

	violations *prometheus.CounterVec
	bansTotal  prometheus.Counter
	refused    prometheus.Counter
}

// NewBans returns the ban gate's logic over list; now is the clock (nil: time.Now).
func NewBans(list store.BanList, log *slog.Logger, now func() time.Time, reg prometheus.Registerer) (*Bans, error) {
	if now == nil {
		now = time.Now
	}
	b := &Bans{list: list, log: log, now: now,
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "filter", Name: "violations_total",
			Help: "Requests refused for breaking a rule, by rule set and check."}, []string{"rule_set", "check"}),
		bansTotal: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "filter", Name: "bans_total",
			Help: "Clients banned for repeated violations."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "filter", Name: "banned_requests_total",
			Help: "Requests refused because their client is banned."}),
	}
	if err := metrics.Register(reg, b.violations, b.bansTotal, b.refused); err != nil {
		return nil, err
	}
	return b, nil
}

// Banned reports whether client is banned now. A ban list that cannot be
// read bans no one (logged): sluice keeps serving.
func (b *Bans) Banned(ctx context.Context, client string) (store.Ban, bool) {
	x, ok, err := b.list.Banned(ctx, client)
	if err != nil {
		b.log.Warn("ban list not readable; the client is let through", "client_ip", client, "error", err.Error())
		return store.Ban{}, false
	}
	if ok {
		b.refused.Inc()
	}
	return x, ok
}

// Strike records a violation by client of rules and bans it when the
// rule set's threshold is reached. It reports whether a ban began.
func (b *Bans) Strike(ctx context.Context, client string, rules *Rules, v *Violation) bool {
	b.violations.WithLabelValues(rules.Name, v.Check).Inc()
	p := rules.Ban
	if p == nil {
		return false
	}
	n, err := b.list.Strike(ctx, client, p.Window.D())
	if err != nil {
		b.log.Warn("violation not counted", "client_ip", client, "error", err.Error())
		return false
	}
	if n < p.Violations {
		return false
	}
	if err := b.list.Add(ctx, store.Ban{Client: client, Until: b.now().Add(p.Duration.D()), Reason: rules.Name + ": " + v.Check}); err != nil {
		b.log.Error("ban not stored", "client_ip", client, "error", err.Error())
		return false
	}
	b.bansTotal.Inc()
	return true
}

// List returns the bans in force.
func (b *Bans) List(ctx context.Context) ([]store.Ban, error) { return b.list.List(ctx) }

// Add bans client for d (an operator's ban).
func (b *Bans) Add(ctx context.Context, client string, d time.Duration, reason string) error {
	return b.list.Add(ctx, store.Ban{Client: client, Until: b.now().Add(d), Reason: reason})
}

// Remove lifts client's ban; it reports whether there was one.
func (b *Bans) Remove(ctx context.Context, client string) (bool, error) {
	return b.list.Remove(ctx, client)
}
