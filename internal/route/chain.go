// Package route compiles a config into its runtime table and holds the one
// ordered list of the pipeline's stages (Build, in this file): every entry
// point (a CONNECT, each request inside an intercepted connection, an
// absolute-URI request, the reverse listener) runs it, in that order. A
// stage that answers never calls the next.
//
// To add a stage: write it as a Middleware constructor in its own package,
// owning its answers, and add one named, commented line to head (before
// the policy) or tail (after it, built per route). To add a
// profile: a YAML file in internal/config/profiles. To add a rule kind: a
// field in config.RuleSet, its check in internal/filter.
package route

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"

	"sluice/internal/blobs"
	"sluice/internal/cache"
	"sluice/internal/canon"
	"sluice/internal/decision"
	"sluice/internal/filter"
	"sluice/internal/guardrails"
	"sluice/internal/obs"
	"sluice/internal/onboard"
	"sluice/internal/policy"
	"sluice/internal/proxy"
	"sluice/internal/streams"
	"sluice/internal/throttle"
	"sluice/internal/vault"
)

// Middleware wraps next. It calls next to continue, or writes the response itself.
type Middleware = func(next http.Handler) http.Handler

// Chain returns mw[0](mw[1](...(h))): the first middleware sees the request first.
func Chain(h http.Handler, mw ...Middleware) http.Handler {
	for _, m := range slices.Backward(mw) {
		h = m(h)
	}
	return h
}

// Deps are the components the stages use, built once by NewGateway and
// shared by every table.
type Deps struct {
	Log    *slog.Logger
	Access *obs.Metrics
	Proxy  *proxy.Server
	Cache  *cache.Cache
	Blobs  *blobs.Store // nil: no blob store
	Limit  *throttle.Limiter
	Bans   *filter.Bans // nil: no bans
	// Reports notes what report mode lets through (nil: nothing noted).
	Reports *policy.Reports
	// Clients counts each named client's requests and the vault's signatures.
	Clients *vault.Metrics
	// Streams are the shared market streams, by host.
	Streams *streams.Hubs
	// Onboarding is the page at http://sluice.invalid/.
	Onboarding *onboard.Page
	// Tail keeps the last access lines for sluice log.
	Tail *obs.Tail
	// Guard holds the trade limits' counts and the halts.
	Guard        *guardrails.Guard
	GuardMetrics *guardrails.Metrics
	// AccessLines, when set, takes the access lines as JSON directly (the
	// writer of Log's JSON handler); nil: through Log.
	AccessLines io.Writer
}

// Build makes the table's pipeline. This is the only place its order is
// defined: cheapest refusals first, and only what goes upstream spends
// budget. Every request runs the head; after the policy's decision it
// runs the tail of its route, built here once per route with that route's
// compiled values, so that no stage looks its route up per request and a
// route without a budget has no throttle stage.
func (t *Table) Build(d Deps) {
	for pattern, rt := range t.routes {
		d.Limit.Declare(rt.Throttle)
		if rt.Streams != nil {
			d.Limit.Declare(rt.Streams.Budgets())
			if !strings.Contains(pattern, "*") {
				d.Streams.Declare(pattern)
			}
		}
		d.Bans.Declare(rt.Rules)
		forward := d.Proxy.Forwarder(rt.upstream)
		rt.handler = chain(forward, t.tail(d, rt, forward))
	}
	d.Clients.Declare(t.Vault)
	t.groupScopes = t.clientGroupScopes()
	for _, sc := range t.limitScopes() {
		d.GuardMetrics.Declare(sc.ID)
	}
	t.handler = chain(http.HandlerFunc(t.dispatch), t.head(d))
}

// A stage is one named step of the pipeline (docs/architecture.md's stage table
// lists them by these names, and a test holds the two together).
type stage struct {
	name string
	mw   Middleware // nil: the route has none (a host without a budget)
}

// head is what every request runs, up to the policy's decision.
func (t *Table) head(d Deps) []stage {
	return []stage{
		{"access log", obs.AccessLog(d.Log, d.Access, obs.LogOptions{Queries: t.Config.Log.Queries, JSONLines: d.AccessLines, Tail: d.Tail})}, // outermost: the decision record, one canonical line and metrics per request
		{"recover", obs.Recover(d.Log)},                                               // a panic becomes a 500 that the access log records
		{"slow body", d.Proxy.SlowBody(proxy.BodyLimitsOf(t.Config))},                 // a body that stalls, trickles or outlasts timeouts.body is cut off
		{"canonical request", canon.Middleware(t.identify)},                           // canonical request: target and client from the entry point, one spelling of the path
		{"client identity", vault.Identify(d.Clients, t.vault, t.authFailed(d.Bans))}, // which named client: proxy credentials, certificate or address; else 407
		{"ban gate", filter.BanGate(d.Bans)},                                          // banned client (address or name): refused before anything is read
		{"onboarding", d.Onboarding.Middleware},                                       // http://sluice.invalid/: sluice's CA and how to trust it, never forwarded
		{"policy", policy.Middleware(t.Policy, d.Reports)},                            // allowlist: deny, tunnel, intercept or reverse, recorded
	}
}

// tail is what a request runs after the policy chose rt, before rt's
// upstream (the forwarder: verified TLS, pooled, h2).
func (t *Table) tail(d Deps, rt *Route, forward http.Handler) []stage {
	var budget Middleware
	if len(rt.Throttle) > 0 {
		specs := rt.Throttle
		budget = throttle.Middleware(d.Limit, func(r *http.Request) (throttle.Specs, string) { return specs, decision.From(r.Context()).Target.Host })
	}
	return []stage{
		{"grants", vault.Grants(func(*http.Request) (*vault.Vault, vault.Groups) { return t.Vault, rt.Groups })}, // the client's hosts and endpoint groups; no real key where sluice holds it
		{"CONNECT", d.Proxy.Connect(rt.upstream, t.Config.Timeouts)},                                             // a CONNECT ends here: tunneled, or intercepted and its requests served by this pipeline
		{"rules", filter.Middleware(d.Log, d.Bans, func(*http.Request) *filter.Rules { return rt.Rules })},       // the route's rule set: method, path, headers, then the body as it streams
		{"Max-Forwards", proxy.MaxForwards},                                                                      // OPTIONS or TRACE with Max-Forwards: 0 is answered here
		{"streams", d.Streams.Middleware(rt.Streams, rt.Upstream.Client(), forward)},                             // a WebSocket upgrade ends here: a public market stream shared, any other spliced and counted
		{"blobs", blobs.Middleware(d.Blobs, func(r *http.Request) (*blobs.Matcher, string) {
			return rt.Blobs, decision.From(r.Context()).TargetAddr()
		})}, // immutable files from disk, verified
		{"cache", cache.Middleware(d.Cache, func(r *http.Request) (*cache.Rules, string) { return rt.Cache, decision.From(r.Context()).TargetAddr() })}, // fresh hit: answer; miss: coalesce and fill through the rest
		{"whole body", d.Proxy.BufferBody},  // a small body is read whole before budget or an upstream connection is spent on it
		{"guardrails", t.guardrails(d, rt)}, // an order over its client's, group's or key's trade limits, or while halted: refused
		{"throttle", budget},                // a miss waits for upstream budget, or gets sluice's own 429
		{"signing", vault.Sign(d.Log.With("component", "vault"), d.Clients, t.vault)}, // last: the real key in, signed as forwarded, one audit line
	}
}

// chain is Chain over the stages that are there.
func chain(h http.Handler, stages []stage) http.Handler {
	mw := make([]Middleware, 0, len(stages))
	for _, s := range stages {
		if s.mw != nil {
			mw = append(mw, s.mw)
		}
	}
	return Chain(h, mw...)
}

// dispatch runs the tail of the route the policy chose.
func (t *Table) dispatch(w http.ResponseWriter, r *http.Request) {
	if rt, ok := t.routes[decision.From(r.Context()).Rule]; ok {
		rt.handler.ServeHTTP(w, r)
		return
	}
	// Every rule the policy allows has a route (compile makes one per
	// entry that is not denied): this is a bug, not a request to forward.
	obs.WriteError(w, r, &obs.Error{Status: http.StatusInternalServerError, Msg: "no route for the policy's decision",
		Host: decision.From(r.Context()).Target.String(), Err: fmt.Errorf("rule %q has no route", decision.From(r.Context()).Rule)})
}

// ServeHTTP runs r through the table's pipeline.
func (t *Table) ServeHTTP(w http.ResponseWriter, r *http.Request) { t.handler.ServeHTTP(w, r) }

func (t *Table) identify(r *http.Request, rec *decision.Record) *obs.Error {
	return proxy.Identify(r, rec, t.Backend)
}

func (t *Table) vault(*http.Request) *vault.Vault { return t.Vault }

// Live is the table in force: every listener serves through it, and a
// reload swaps a new table in whole. Requests in flight finish on the
// table they started with; an intercepted connection's next request sees
// the new one.
type Live struct{ p atomic.Pointer[Table] }

// Load returns the table in force (nil before the first Store).
func (l *Live) Load() *Table { return l.p.Load() }

// Swap puts t in force and returns the table it replaces (nil at first).
func (l *Live) Swap(t *Table) *Table { return l.p.Swap(t) }

// ServeHTTP serves r through the table in force.
func (l *Live) ServeHTTP(w http.ResponseWriter, r *http.Request) { l.p.Load().ServeHTTP(w, r) }

var _ http.Handler = (*Live)(nil)

// authFailed counts a failed proxy authentication against its address
// (bans.auth_failures).
func (t *Table) authFailed(bans *filter.Bans) func(*http.Request) {
	if bans == nil {
		return nil
	}
	return func(r *http.Request) { bans.StrikeAuth(r.Context(), decision.ClientIP(r), t.Config.Bans.AuthFailures) }
}
