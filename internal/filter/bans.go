package filter

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/atomicfile"
	"sluice/internal/metrics"
)

// maxTracked caps the clients whose violations are counted; the one seen
// least recently is forgotten first.
const maxTracked = 100000

// Bans counts violations per client and bans the clients that cross a
// rule set's threshold. The ban list is kept in the data dir across
// restarts. It is safe for concurrent use.
type Bans struct {
	path string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	banned  map[string]Ban
	strikes map[string][]time.Time // recent violations per client

	violations *prometheus.CounterVec
	bansTotal  prometheus.Counter
	refused    prometheus.Counter
}

// Ban is one banned client.
type Ban struct {
	Client string    `json:"client"`
	Until  time.Time `json:"until"`
	Reason string    `json:"reason"`
}

// OpenBans loads the ban list from path (created on first change).
func OpenBans(path string, log *slog.Logger, now func() time.Time, reg prometheus.Registerer) (*Bans, error) {
	if now == nil {
		now = time.Now
	}
	b := &Bans{path: path, log: log, now: now, banned: map[string]Ban{}, strikes: map[string][]time.Time{},
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
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	var list []Ban
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, err
	}
	for _, x := range list {
		if x.Until.After(now()) {
			b.banned[x.Client] = x
		}
	}
	return b, nil
}

// Banned reports whether client is banned now.
func (b *Bans) Banned(client string) (Ban, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	x, ok := b.banned[client]
	if ok && !b.now().Before(x.Until) {
		delete(b.banned, client)
		return Ban{}, false
	}
	if ok {
		b.refused.Inc()
	}
	return x, ok
}

// Strike records a violation by client of rules and bans it when the
// rule set's threshold is reached. It reports whether a ban began.
func (b *Bans) Strike(client string, rules *Rules, v *Violation) bool {
	b.violations.WithLabelValues(rules.Name, v.Check).Inc()
	p := rules.Ban
	if p == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	recent := slices.DeleteFunc(b.strikes[client], func(t time.Time) bool { return now.Sub(t) >= p.Window.D() })
	recent = append(recent, now)
	if len(recent) < p.Violations {
		if len(b.strikes) >= maxTracked {
			b.forgetOldestLocked()
		}
		b.strikes[client] = recent
		return false
	}
	delete(b.strikes, client)
	b.banned[client] = Ban{Client: client, Until: now.Add(p.Duration.D()), Reason: rules.Name + ": " + v.Check}
	b.bansTotal.Inc()
	b.saveLocked()
	return true
}

func (b *Bans) forgetOldestLocked() {
	var oldest string
	var at time.Time
	for c, ts := range b.strikes {
		if last := ts[len(ts)-1]; oldest == "" || last.Before(at) {
			oldest, at = c, last
		}
	}
	delete(b.strikes, oldest)
}

// List returns the active bans.
func (b *Bans) List() []Ban {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	out := make([]Ban, 0, len(b.banned))
	for _, x := range b.banned {
		if now.Before(x.Until) {
			out = append(out, x)
		}
	}
	slices.SortFunc(out, func(a, c Ban) int { return a.Until.Compare(c.Until) })
	return out
}

// Add bans client for d (an operator's ban).
func (b *Bans) Add(client string, d time.Duration, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.banned[client] = Ban{Client: client, Until: b.now().Add(d), Reason: reason}
	b.saveLocked()
}

// Remove lifts client's ban; it reports whether there was one.
func (b *Bans) Remove(client string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.banned[client]
	delete(b.banned, client)
	delete(b.strikes, client)
	b.saveLocked()
	return ok
}

func (b *Bans) saveLocked() {
	list := make([]Ban, 0, len(b.banned))
	for _, x := range b.banned {
		list = append(list, x)
	}
	data, _ := json.Marshal(list)
	if err := atomicfile.Write(b.path, data, 0o600); err != nil {
		b.log.Error("ban list not saved", "path", b.path, "error", err.Error())
	}
}
