// Package route compiles a config into its runtime table and holds the one
// ordered list of the pipeline's stages (Build, in this file): every entry
// point (a CONNECT, each request inside an intercepted connection, an
// absolute-URI request, the reverse listener) runs it, in that order. A
// stage that answers never calls the next.
//
// To add a stage: write it as a Middleware constructor in its own package,
// owning its answers, and add one commented line to Build. To add a
// profile: a YAML file in internal/config/profiles. To add a rule kind: a
// field in config.RuleSet, its check in internal/filter.
package route

import (
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"

	"sluice/internal/blobs"
	"sluice/internal/cache"
	"sluice/internal/canon"
	"sluice/internal/decision"
	"sluice/internal/filter"
	"sluice/internal/obs"
	"sluice/internal/policy"
	"sluice/internal/proxy"
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

// Deps are the components the stages use, built once by internal/app and
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
	// AccessLines, when set, takes the access lines as JSON directly (the
	// writer of Log's JSON handler); nil: through Log.
	AccessLines io.Writer
}

// Build makes the table's pipeline. This is the only place its order is
// defined: cheapest refusals first, and only what goes upstream spends budget.
func (t *Table) Build(d Deps) {
	for _, rt := range t.routes {
		d.Limit.Declare(rt.Throttle)
		d.Bans.Declare(rt.Rules)
	}
	d.Clients.Declare(t.Vault)
	t.handler = Chain(d.Proxy.Forwarder(t.upstream), // the route's upstream: verified TLS, pooled, h2
		obs.AccessLog(d.Log, d.Access, obs.LogOptions{Queries: t.Config.Log.Queries, JSONLines: d.AccessLines}), // outermost: the decision record, one canonical line and metrics per request
		obs.Recover(d.Log), // a panic becomes a 500 that the access log records
		d.Proxy.SlowBody(proxy.BodyLimitsOf(t.Config)),                   // a body that stalls, trickles or outlasts timeouts.body is cut off
		canon.Middleware(t.identify),                                     // canonical request: target and client from the entry point, one spelling of the path
		vault.Identify(d.Clients, t.vault, t.authFailed(d.Bans)),         // which named client: proxy credentials, certificate or address; else 407
		filter.BanGate(d.Bans),                                           // banned client (address or name): refused before anything is read
		policy.Middleware(t.Policy, d.Reports),                           // allowlist: deny, tunnel, intercept or reverse, recorded
		vault.Grants(t.grants),                                           // the client's hosts and endpoint groups; no real key where sluice holds it
		d.Proxy.Connect(t.upstream, t.Config.Timeouts),                   // a CONNECT ends here: tunneled, or intercepted and its requests served by this pipeline
		filter.Middleware(d.Log, d.Bans, t.rules),                        // the route's rule set: method, path, headers, then the body as it streams
		proxy.MaxForwards,                                                // OPTIONS or TRACE with Max-Forwards: 0 is answered here
		blobs.Middleware(d.Blobs, t.blobs),                               // immutable files from disk, verified
		cache.Middleware(d.Cache, t.cache),                               // fresh hit: answer; miss: coalesce and fill through the rest
		d.Proxy.BufferBody(int64(t.Config.Limits.BufferedBodies)),        // a small body is read whole before budget or an upstream connection is spent on it
		throttle.Middleware(d.Limit, t.throttle),                         // a miss waits for upstream budget, or gets sluice's own 429
		vault.Sign(d.Log.With("component", "vault"), d.Clients, t.vault), // last: the real key in, signed as forwarded, one audit line
	)
}

// ServeHTTP runs r through the table's pipeline.
func (t *Table) ServeHTTP(w http.ResponseWriter, r *http.Request) { t.handler.ServeHTTP(w, r) }

// route returns the route the policy chose for r (none: a zero Route).
func (t *Table) route(r *http.Request) *Route {
	if rt, ok := t.routes[decision.From(r.Context()).Rule]; ok {
		return rt
	}
	return &noRoute
}

var noRoute Route

func (t *Table) identify(r *http.Request, rec *decision.Record) *obs.Error {
	return proxy.Identify(r, rec, t.Backend)
}

func (t *Table) upstream(r *http.Request) *proxy.Upstream { return t.route(r).Upstream }
func (t *Table) vault(*http.Request) *vault.Vault         { return t.Vault }
func (t *Table) grants(r *http.Request) (*vault.Vault, vault.Groups) {
	return t.Vault, t.route(r).Groups
}
func (t *Table) rules(r *http.Request) *filter.Rules { return t.route(r).Rules }

func (t *Table) blobs(r *http.Request) (*blobs.Matcher, string) {
	return t.route(r).Blobs, decision.From(r.Context()).TargetAddr()
}

func (t *Table) cache(r *http.Request) (*cache.Rules, string) {
	return t.route(r).Cache, decision.From(r.Context()).TargetAddr()
}

func (t *Table) throttle(r *http.Request) (throttle.Specs, string) {
	return t.route(r).Throttle, decision.From(r.Context()).Target.Host
}

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
