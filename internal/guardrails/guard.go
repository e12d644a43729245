// Package guardrails holds the trade limits of clients, groups of clients
// and keys, and halts: every order a client sends through sluice is read
// (Parse) and checked against each limit that applies to it before it
// can reach the exchange; an order over one is refused with the limit and
// its config key. Cancels always pass, unless a halt is full.
package guardrails

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"sluice/internal/config"
)

// Scope is one set of limits and the orders that count against it.
type Scope struct {
	ID     string              // "client:bot1", "group:fleet-a", "key:binance-main"
	Key    string              // where its limits are in the config: "clients.bot1.limits"
	Limits *config.TradeLimits // nil: none (a halt still applies)
}

// Refusal is why an order was refused.
type Refusal struct {
	Scope  string // the scope's ID
	Limit  string // orders_per_minute, symbols, halt, ...
	Detail string // the limit, the config key, and what to change
}

// HaltMode is what a halt stops.
type HaltMode string

const (
	// CancelOnly refuses new orders and leverage changes; cancels pass,
	// so that a halted bot can flatten its book.
	CancelOnly HaltMode = "cancel-only"
	// Full refuses cancels too.
	Full HaltMode = "full"
)

// Halt stops a scope's trading until it is lifted or expires.
type Halt struct {
	Scope  string    `json:"scope"` // a scope ID, or "all"
	Mode   HaltMode  `json:"mode"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until,omitzero"` // zero: until lifted
}

// HaltAll is the scope of a halt of every client.
const HaltAll = "all"

// Guard counts orders per scope and holds the halts.
type Guard struct {
	mu     sync.Mutex
	counts map[string]*window
	halts  map[string]Halt
	open   map[string]map[string]bool // by scope: the orders open (see open.go)
	// Prices value the orders that carry no price.
	Prices *Prices
	// Shared (nil: none) counts a fleet's orders in one place; while it
	// does not answer, this instance counts alone.
	Shared SharedCounts
}

// SharedCounts count a fleet's orders per scope (see redisstore.TradeCounts).
type SharedCounts interface {
	CheckAdd(ctx context.Context, ids []string, limits [][3]float64, n int, notional float64, now time.Time) (refused int, limit string, before [][3]float64, err error)
}

// New returns a Guard with nothing counted and nothing halted.
func New() *Guard {
	return &Guard{counts: map[string]*window{}, halts: map[string]Halt{}, open: map[string]map[string]bool{}, Prices: NewPrices()}
}

// window counts a scope's orders and notional over the last minute (by
// second) and the last 24 hours (by minute), with running totals: the
// buckets that fall out of a window as time passes are taken out of its
// total then, so a check costs the same whatever the history.
type window struct {
	secs             [60]bucket
	mins             [1440]bucket
	lastSec, lastMin int64
	minute, day      int
	dayNotional      float64
}

type bucket struct {
	orders   int
	notional float64
}

// advance takes out of the totals what is older than each window at now.
func (w *window) advance(now time.Time) {
	s, m := now.Unix(), now.Unix()/60
	for t := max(w.lastSec+1, s-59); t <= s; t++ {
		b := &w.secs[t%60]
		w.minute -= b.orders
		*b = bucket{}
	}
	for t := max(w.lastMin+1, m-1439); t <= m; t++ {
		b := &w.mins[t%1440]
		w.day -= b.orders
		w.dayNotional -= b.notional
		*b = bucket{}
	}
	w.lastSec, w.lastMin = max(w.lastSec, s), max(w.lastMin, m)
}

func (w *window) sum(now time.Time) (minute, day int, dayNotional float64) {
	w.advance(now)
	return w.minute, w.day, w.dayNotional
}

func (w *window) add(now time.Time, orders int, notional float64) {
	w.advance(now)
	s, m := w.lastSec, w.lastMin
	w.secs[s%60].orders += orders
	w.mins[m%1440].orders += orders
	w.mins[m%1440].notional += notional
	w.minute += orders
	w.day += orders
	w.dayNotional += notional
}

// Warning says that an order took a scope's use of a limit to its
// warn_at share or past it.
type Warning struct {
	Scope, Limit, Key string
	Used, Max         float64
}

// Use is how much of a limit a scope has used.
type Use struct {
	Scope string  `json:"scope"`
	Limit string  `json:"limit"`
	Used  float64 `json:"used"`
	Max   float64 `json:"max"`
}

// uses are a scope's counted limits at the counts given.
func uses(l *config.TradeLimits, minute, day int, notional float64) []struct {
	limit     string
	used, max float64
} {
	return []struct {
		limit     string
		used, max float64
	}{
		{"orders_per_minute", float64(minute), float64(l.OrdersPerMinute)},
		{"orders_per_day", float64(day), float64(l.OrdersPerDay)},
		{"notional_per_day", notional, l.NotionalPerDay},
	}
}

// Check decides on req from the scopes it counts against, at now, and
// counts an order that passes against each of them; warnings are the
// limits whose warn_at share the order reached.
func (g *Guard) Check(scopes []Scope, req Request, now time.Time) (*Refusal, []Warning) {
	if req.Kind == Other {
		return nil, nil
	}
	if r := g.checkOrder(scopes, req, now); r != nil || req.Kind != Place {
		return r, nil
	}
	total := 0.0
	for _, o := range req.Orders {
		total += o.Notional
	}
	var counted []Scope
	for _, s := range scopes {
		if s.Limits != nil {
			counted = append(counted, s)
		}
	}
	if len(counted) == 0 {
		return nil, nil
	}
	if g.Shared != nil {
		ids := make([]string, len(counted))
		limits := make([][3]float64, len(counted))
		for i, s := range counted {
			ids[i] = s.ID
			limits[i] = [3]float64{float64(s.Limits.OrdersPerMinute), float64(s.Limits.OrdersPerDay), s.Limits.NotionalPerDay}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		refused, limit, before, err := g.Shared.CheckAdd(ctx, ids, limits, len(req.Orders), total, now)
		cancel()
		if err == nil && len(before) == len(counted) {
			if refused >= 0 {
				t := before[refused]
				return countRefusal(counted[refused], limit, int(t[0]), int(t[1]), t[2], total), nil
			}
			var warnings []Warning
			for i, s := range counted {
				warnings = append(warnings, crossed(s, int(before[i][0]), int(before[i][1]), before[i][2], len(req.Orders), total)...)
			}
			return nil, warnings
		}
		// Redis did not answer: this instance counts alone meanwhile.
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range counted {
		if w := g.counts[s.ID]; w != nil {
			minute, day, dayNotional := w.sum(now)
			for _, u := range uses(s.Limits, minute+len(req.Orders), day+len(req.Orders), dayNotional+total) {
				if u.max > 0 && u.used > u.max {
					return countRefusal(s, u.limit, minute, day, dayNotional, total), nil
				}
			}
		}
	}
	var warnings []Warning
	for _, s := range counted {
		w := g.counts[s.ID]
		if w == nil {
			w = &window{}
			g.counts[s.ID] = w
		}
		m0, d0, n0 := w.sum(now)
		w.add(now, len(req.Orders), total)
		warnings = append(warnings, crossed(s, m0, d0, n0, len(req.Orders), total)...)
	}
	return nil, warnings
}

// checkOrder checks what needs no counts: halts, leverage, symbols, value
// and open orders.
func (g *Guard) checkOrder(scopes []Scope, req Request, now time.Time) *Refusal {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, id := range append([]string{HaltAll}, ids(scopes)...) {
		h, ok := g.halts[id]
		if !ok {
			continue
		}
		if !h.Until.IsZero() && !now.Before(h.Until) {
			delete(g.halts, id)
			continue
		}
		if req.Kind != Cancel || h.Mode == Full {
			what := "new orders"
			if h.Mode == Full {
				what = "all trading, cancels too"
			}
			until := "until sluice resume"
			if !h.Until.IsZero() {
				until = "until " + h.Until.Format(time.DateTime) + " (or sluice resume)"
			}
			return &Refusal{id, "halt", fmt.Sprintf("%s is halted (%s: %s) %s: %s", id, h.Mode, what, until, h.Reason)}
		}
	}
	if req.Kind == Leverage || req.Leverage {
		for _, s := range scopes {
			if s.Limits != nil && !s.Limits.Leverage {
				return &Refusal{s.ID, "leverage", fmt.Sprintf("leverage changes are refused for %s; %s.leverage: true allows them", s.ID, s.Key)}
			}
		}
	}
	if req.Kind != Place {
		return nil
	}
	for _, s := range scopes {
		l := s.Limits
		if l == nil {
			continue
		}
		for _, o := range req.Orders {
			if len(l.Symbols) > 0 && !slices.ContainsFunc(l.Symbols, func(x string) bool { return strings.EqualFold(x, o.Symbol) }) {
				return &Refusal{s.ID, "symbols", fmt.Sprintf("%s may not trade %s: %s.symbols is %v", s.ID, o.Symbol, s.Key, l.Symbols)}
			}
			if o.Notional == 0 && (l.NotionalPerOrder > 0 || l.NotionalPerDay > 0) && l.Unpriced != "allow" {
				return &Refusal{s.ID, "unpriced", fmt.Sprintf("sluice cannot value this order of %s (a market order by base quantity, and no price of %s seen in the last %s), and %s has a notional limit; give a price or quote quantity, or set %s.unpriced: allow", o.Symbol, o.Symbol, priceMaxAge, s.ID, s.Key)}
			}
			if l.NotionalPerOrder > 0 && o.Notional > l.NotionalPerOrder {
				return &Refusal{s.ID, "notional_per_order", fmt.Sprintf("the order of %s is worth %s, over %s.notional_per_order %s", o.Symbol, amount(o.Notional), s.Key, amount(l.NotionalPerOrder))}
			}
		}
		if open := g.openCount(s.ID); l.OpenOrders > 0 && open+len(req.Orders) > l.OpenOrders {
			return &Refusal{s.ID, "open_orders", fmt.Sprintf("%s has %s open: %s.open_orders is %d (an order filled since is counted until a bot asks the exchange for its open orders)", s.ID, orders(open), s.Key, l.OpenOrders)}
		}
	}
	return nil
}

// countRefusal says which counted limit of s an order worth total refused
// at the counts minute, day and dayNotional.
func countRefusal(s Scope, limit string, minute, day int, dayNotional, total float64) *Refusal {
	l := s.Limits
	switch limit {
	case "orders_per_minute":
		return &Refusal{s.ID, limit, fmt.Sprintf("%s placed %s in the last minute: %s.orders_per_minute is %d", s.ID, orders(minute), s.Key, l.OrdersPerMinute)}
	case "orders_per_day":
		return &Refusal{s.ID, limit, fmt.Sprintf("%s placed %s in the last 24 hours: %s.orders_per_day is %d", s.ID, orders(day), s.Key, l.OrdersPerDay)}
	}
	return &Refusal{s.ID, "notional_per_day", fmt.Sprintf("%s ordered %s in the last 24 hours, and this order adds %s: %s.notional_per_day is %s", s.ID, amount(dayNotional), amount(total), s.Key, amount(l.NotionalPerDay))}
}

// crossed are the warnings of the limits of s whose warn_at share n orders
// worth total reached from the counts before them.
func crossed(s Scope, minute, day int, dayNotional float64, n int, total float64) []Warning {
	warnAt := config.DefaultWarnAt
	if s.Limits.WarnAt != nil {
		warnAt = *s.Limits.WarnAt
	}
	var out []Warning
	before := uses(s.Limits, minute, day, dayNotional)
	for i, u := range uses(s.Limits, minute+n, day+n, dayNotional+total) {
		if u.max > 0 && u.used >= warnAt*u.max && before[i].used < warnAt*u.max {
			out = append(out, Warning{s.ID, u.limit, s.Key + "." + u.limit, u.used, u.max})
		}
	}
	return out
}

// Uses are the limits' use by each scope of scopes that has limits, at now.
func (g *Guard) Uses(scopes []Scope, now time.Time) []Use {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Use
	for _, s := range scopes {
		if s.Limits == nil {
			continue
		}
		var minute, day int
		var notional float64
		if w := g.counts[s.ID]; w != nil {
			minute, day, notional = w.sum(now)
		}
		for _, u := range uses(s.Limits, minute, day, notional) {
			if u.max > 0 {
				out = append(out, Use{s.ID, u.limit, u.used, u.max})
			}
		}
	}
	return out
}

func orders(n int) string {
	if n == 1 {
		return "1 order"
	}
	return fmt.Sprintf("%d orders", n)
}

func amount(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.8f", f), "0"), ".")
}

func ids(scopes []Scope) []string {
	out := make([]string, len(scopes))
	for i, s := range scopes {
		out[i] = s.ID
	}
	return out
}

// Halt puts h in force (replacing a halt of the same scope).
func (g *Guard) Halt(h Halt) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.halts[h.Scope] = h
}

// Replace puts halts in force instead of those held: the fleet's list.
func (g *Guard) Replace(halts []Halt) {
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(g.halts)
	for _, h := range halts {
		g.halts[h.Scope] = h
	}
}

// Resume lifts the halt of scope; false when there was none.
func (g *Guard) Resume(scope string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.halts[scope]
	delete(g.halts, scope)
	return ok
}

// Halts lists the halts in force at now, by scope.
func (g *Guard) Halts(now time.Time) []Halt {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Halt
	for id, h := range g.halts {
		if !h.Until.IsZero() && !now.Before(h.Until) {
			delete(g.halts, id)
			continue
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b Halt) int { return strings.Compare(a.Scope, b.Scope) })
	return out
}
