package route

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/guardrails"
)

// The trade guardrails' scopes: a client, a group of clients or a key,
// each with the config path of its limits.
func clientScope(name string, c *config.Client) guardrails.Scope {
	return guardrails.Scope{ID: "client:" + name, Key: config.KeyPath("clients", name, "limits"), Limits: c.Limits}
}

func groupScope(name string, g *config.ClientGroup) guardrails.Scope {
	return guardrails.Scope{ID: "group:" + name, Key: config.KeyPath("groups", name, "limits"), Limits: g.Limits}
}

func keyScope(name string, k *config.Key) guardrails.Scope {
	return guardrails.Scope{ID: "key:" + name, Key: config.KeyPath("keys", name, "limits"), Limits: k.Limits}
}

// guardrails is the route's trade limits stage: only the hosts of an
// exchange whose orders sluice reads have one.
func (t *Table) guardrails(d Deps, rt *Route) Middleware {
	exchange := rt.Settings.Profile
	if !slices.Contains(config.Exchanges, exchange) {
		return nil
	}
	return guardrails.Middleware(d.Guard, d.GuardMetrics, d.Log.With("component", "guardrails"), exchange, func(r *http.Request) []guardrails.Scope {
		rec := decision.From(r.Context())
		return t.tradeScopes(rec.Client, rec.Target.Host, rec.Rule)
	})
}

// clientGroupScopes are, by client, the scopes of the groups it is in:
// made once per table, for every order to look up.
func (t *Table) clientGroupScopes() map[string][]guardrails.Scope {
	out := map[string][]guardrails.Scope{}
	for _, name := range slices.Sorted(maps.Keys(t.Config.Groups)) {
		if g := t.Config.Groups[name]; g != nil {
			for _, c := range g.Clients {
				out[c] = append(out[c], groupScope(name, g))
			}
		}
	}
	return out
}

// tradeScopes are the limits a client's order to host counts against: the
// client's own, its groups', and those of the key it trades with there.
func (t *Table) tradeScopes(client, host, rule string) []guardrails.Scope {
	c := t.Config.Clients[client]
	if c == nil {
		return nil
	}
	scopes := append([]guardrails.Scope{clientScope(client, c)}, t.groupScopes[client]...)
	k := c.Keys[host]
	if k == "" {
		k = c.Keys[rule]
	}
	if key := t.Config.Keys[k]; key != nil {
		scopes = append(scopes, keyScope(k, key))
	}
	return scopes
}

// limitScopes are the table's clients, groups and keys that have limits.
func (t *Table) limitScopes() []guardrails.Scope {
	var out []guardrails.Scope
	for _, name := range slices.Sorted(maps.Keys(t.Config.Clients)) {
		if c := t.Config.Clients[name]; c != nil && c.Limits != nil {
			out = append(out, clientScope(name, c))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.Config.Groups)) {
		if g := t.Config.Groups[name]; g != nil && g.Limits != nil {
			out = append(out, groupScope(name, g))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(t.Config.Keys)) {
		if k := t.Config.Keys[name]; k != nil && k.Limits != nil {
			out = append(out, keyScope(name, k))
		}
	}
	return out
}

// Trading is what the dashboard shows of the guardrails: the halts in
// force, and the use of each limit of the table's clients, groups and keys.
func (t *Table) Trading(g *guardrails.Guard) ([]guardrails.Halt, []guardrails.Use) {
	now := time.Now()
	return g.Halts(now), g.Uses(t.limitScopes(), now)
}

// HaltScope checks that a halt's scope names a client or group of the
// table's config, or is all.
func (t *Table) HaltScope(scope string) error {
	kind, name, _ := strings.Cut(scope, ":")
	switch {
	case scope == guardrails.HaltAll:
		return nil
	case kind == "client" && t.Config.Clients[name] != nil, kind == "group" && t.Config.Groups[name] != nil:
		return nil
	case kind == "client" || kind == "group":
		return fmt.Errorf("no %s %q in the running config", kind, name)
	}
	return fmt.Errorf("scope %q: want client:NAME, group:NAME or all", scope)
}

// valuesOrders reports whether a client, group or key has a notional
// limit: only then are prices read from tickers and streams to value
// orders that carry none.
func (t *Table) valuesOrders() bool {
	var all []*config.TradeLimits
	for _, c := range t.Config.Clients {
		all = append(all, c.Limits)
	}
	for _, g := range t.Config.Groups {
		all = append(all, g.Limits)
	}
	for _, k := range t.Config.Keys {
		all = append(all, k.Limits)
	}
	return slices.ContainsFunc(all, func(l *config.TradeLimits) bool {
		return l != nil && (l.NotionalPerOrder > 0 || l.NotionalPerDay > 0)
	})
}
