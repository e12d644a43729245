package filter

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/config"
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
	v6   int // bans.ipv6_prefix

	violations *prometheus.CounterVec
	bansTotal  prometheus.Counter
	refused    prometheus.Counter
}

// NewBans returns the ban gate's logic over list, counting and banning
// IPv6 clients by their /ipv6Prefix (bans.ipv6_prefix); now is the clock
// (nil: time.Now).
func NewBans(list store.BanList, log *slog.Logger, now func() time.Time, reg prometheus.Registerer, ipv6Prefix int) (*Bans, error) {
	if now == nil {
		now = time.Now
	}
	b := &Bans{list: list, log: log, now: now, v6: ipv6Prefix,
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

// Declare creates the violation series of every check rules can report,
// at zero, so that an alert on them works before the first violation.
func (b *Bans) Declare(rules *Rules) {
	if b == nil || rules == nil {
		return
	}
	for _, check := range rules.Checks() {
		b.violations.WithLabelValues(rules.Name, check)
	}
}

// Banned reports whether client is banned now. A ban list that cannot be
// read bans no one (logged): sluice keeps serving.
func (b *Bans) Banned(ctx context.Context, client string) (store.Ban, bool) {
	x, ok, err := b.list.Banned(ctx, b.key(client))
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
	client = b.key(client)
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

// StrikeAuth records a failed proxy authentication by client (an address)
// and bans it for p.Duration after p.Violations within p.Window: a
// password is not guessed one request at a time for ever.
func (b *Bans) StrikeAuth(ctx context.Context, client string, p *config.BanPolicy) bool {
	return b.Strike(ctx, client, &Rules{Name: "clients", Ban: p}, &Violation{Check: "proxy_auth"})
}

// List returns the bans in force.
func (b *Bans) List(ctx context.Context) ([]store.Ban, error) { return b.list.List(ctx) }

// Add bans client for d (an operator's ban).
func (b *Bans) Add(ctx context.Context, client string, d time.Duration, reason string) error {
	return b.list.Add(ctx, store.Ban{Client: b.key(client), Until: b.now().Add(d), Reason: reason})
}

// Remove lifts client's ban (an address, or a listed prefix); it reports
// whether there was one.
func (b *Bans) Remove(ctx context.Context, client string) (bool, error) {
	return b.list.Remove(ctx, b.key(client))
}

// key is what a client is counted and banned as: its address, or for an
// IPv6 address its prefix (one host holds a whole /64). Anything that is
// no address (a listed prefix) is its own key.
func (b *Bans) key(client string) string {
	a, err := netip.ParseAddr(client)
	if err != nil {
		return client
	}
	if a.Is4() {
		return client // ParseAddr takes only the canonical spelling of an IPv4 address
	}
	if p := config.ClientNetwork(a, b.v6); !p.IsSingleIP() {
		return p.String()
	}
	return a.Unmap().String()
}
