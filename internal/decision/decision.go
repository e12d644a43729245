// Package decision holds the decision record of one request: where it came
// in, what it asked for, and what each stage of the pipeline decided, as
// typed values. The access log creates the record, puts it in the request
// context, and writes it as one line and as metrics once the request is
// done; every stage fills in its own part (smokescreen's aclDecision is the
// model). Every stage imports it; it imports no stage.
package decision

import (
	"context"
	"net"
	"net/http"
	"time"

	"sluice/internal/hostport"
)

// Entry is the entry point a request came in by.
type Entry uint8

const (
	// EntryForward is an absolute-URI request on the forward proxy listener.
	EntryForward Entry = iota
	// EntryConnect is a CONNECT on the forward proxy listener.
	EntryConnect
	// EntryIntercept is a request inside an intercepted CONNECT.
	EntryIntercept
	// EntryReverse is a request to the reverse-proxy listener.
	EntryReverse
	// EntryTransparentTLS is a TLS connection to the transparent listener,
	// its target the ClientHello's SNI on port 443.
	EntryTransparentTLS
	// EntryTransparentHTTP is a plain request to the transparent HTTP
	// listener, its target its Host on port 80.
	EntryTransparentHTTP

	// Entries is how many entry points there are.
	Entries = int(EntryTransparentHTTP) + 1
)

var entryNames = [...]string{EntryForward: "forward", EntryConnect: "connect", EntryIntercept: "intercept", EntryReverse: "reverse",
	EntryTransparentTLS: "transparent_tls", EntryTransparentHTTP: "transparent_http"}

func (e Entry) String() string { return entryNames[e] }

// Connection reports whether the entry decides a whole connection (a
// CONNECT, a transparent TLS connection), which may be tunneled, rather
// than one request.
func (e Entry) Connection() bool { return e == EntryConnect || e == EntryTransparentTLS }

// Action is what the policy decided for a target.
type Action uint8

const (
	// Undecided: the request was refused before the policy saw it.
	Undecided Action = iota
	// Deny refuses the target.
	Deny
	// Tunnel splices a CONNECT byte for byte.
	Tunnel
	// Intercept reads and forwards each request (the config's mode: intercept).
	Intercept
	// Reverse sends the request to the reverse listener's backend.
	Reverse

	// Actions is how many actions there are.
	Actions = int(Reverse) + 1
)

var actionNames = [...]string{Undecided: "none", Deny: "deny", Tunnel: "tunnel", Intercept: "intercept", Reverse: "reverse"}

func (a Action) String() string { return actionNames[a] }

// Stage names a stage that refused a request.
type Stage uint8

const (
	// None: no stage refused the request.
	None Stage = iota
	// Canon refused a request that has no canonical form (bad target, path or Host).
	Canon
	// Ban refused a banned client.
	Ban
	// Policy refused a target that is not allowed.
	Policy
	// Rules refused a request that broke its host's rule set.
	Rules
	// Budget answered 429: no upstream budget within max_wait.
	Budget
	// Identity refused a client that names no client of the config (407).
	Identity
	// Grant refused a request outside its client's hosts, endpoint groups or keys.
	Grant
	// Vault could not sign a request with its client's key.
	Vault
	// Streams refused a WebSocket it could not serve (too many clients).
	Streams
	// Guardrails refused an order over a trade limit, or while halted.
	Guardrails
)

var stageNames = [...]string{None: "", Canon: "canon", Ban: "ban", Policy: "policy", Rules: "rules", Budget: "budget",
	Identity: "identity", Grant: "grant", Vault: "vault", Streams: "streams", Guardrails: "guardrails"}

func (s Stage) String() string { return stageNames[s] }

// CacheResult is how the response cache or the blob store answered.
type CacheResult uint8

const (
	// NotCached: the request never reached a cache (or its host has none).
	NotCached CacheResult = iota
	Hit
	Miss
	Stale
	Bypass
)

var cacheNames = [...]string{NotCached: "", Hit: "hit", Miss: "miss", Stale: "stale", Bypass: "bypass"}

func (c CacheResult) String() string { return cacheNames[c] }

// Scheme is how the client reaches the target through sluice.
type Scheme uint8

const (
	// HTTPS is a CONNECT, a request inside an intercepted CONNECT, or an
	// https:// absolute URI (sluice makes the TLS connection).
	HTTPS Scheme = iota
	// HTTP is plain HTTP to the upstream.
	HTTP
)

// DefaultPort is the port a URL of the scheme implies.
func (s Scheme) DefaultPort() uint16 {
	if s == HTTP {
		return 80
	}
	return 443
}

func (s Scheme) String() string {
	if s == HTTP {
		return "http"
	}
	return "https"
}

// Record is the decision record of one request. Its fields are written by
// the stages of the request's own goroutine, in pipeline order.
type Record struct {
	Entry    Entry
	ClientIP string
	// Client is the client's name from clients:, once it proved it.
	Client string
	Method string
	// Target is where the request goes, as the entry point fixed it (the
	// CONNECT line, the absolute URI, the reverse backend); zero until known.
	Target hostport.HostPort
	Scheme Scheme
	// Path is the request path, canonical once the canon stage ran; Query
	// is the redacted query string when log.queries is set, else "".
	Path, Query string

	// RefusedBy is the stage that answered the request itself, if any.
	RefusedBy Stage
	// Action and Rule are the policy's decision and the hosts key it matched.
	Action Action
	Rule   string
	// Reason is a short phrase for the log: why a request was refused or failed.
	Reason string
	// RuleSet and Check name the rule set and check a request broke.
	RuleSet, Check string
	Cache          CacheResult
	// Budget names the upstream budget the request spent, Waited how long it queued.
	Budget string
	Waited time.Duration

	Status       int
	UpstreamAddr string
	BytesIn      int64
	BytesOut     int64
	Start        time.Time
	// Err is the operator-facing detail of a failure; never sent to clients.
	Err error
	// Stream sums up a WebSocket session; nil for any other request.
	Stream *StreamSession

	// targetAddr is Target.String() for targetOf: made once, not by
	// every stage that keys on it.
	targetAddr string
	targetOf   hostport.HostPort
}

// StreamSession is what a client's WebSocket session did, for its access
// line when it ends.
type StreamSession struct {
	// Shared: served from sluice's shared subscriptions; else spliced to
	// the upstream for this client alone.
	Shared bool
	// Subscriptions is the most streams the client held at once.
	Subscriptions int
	// MessagesIn and MessagesOut count the client's messages each way.
	MessagesIn, MessagesOut int64
	// Close is how the session ended: who closed it, and why.
	Close string
}

// TargetAddr returns Target.String().
func (r *Record) TargetAddr() string {
	if r.targetAddr == "" || r.targetOf != r.Target {
		r.targetAddr, r.targetOf = r.Target.String(), r.Target
	}
	return r.targetAddr
}

// SetTarget sets Target to t, whose String() the caller has already
// made: an intercepted connection's requests share their CONNECT's.
func (r *Record) SetTarget(t hostport.HostPort, addr string) {
	r.Target, r.targetAddr, r.targetOf = t, addr, t
}

// Outcome is the log's one-word outcome: deny when the canonical request,
// the ban gate, the policy or the rules refused it, else the policy's action.
func (r *Record) Outcome() Action {
	switch r.RefusedBy {
	case Canon, Ban, Identity, Policy, Grant, Rules:
		return Deny
	}
	return r.Action
}

// Refuse records that stage answered the request itself, for reason.
func (r *Record) Refuse(stage Stage, reason string) {
	r.RefusedBy, r.Reason = stage, reason
}

type recordKey struct{}

// With returns ctx carrying rec.
func With(ctx context.Context, rec *Record) context.Context {
	return context.WithValue(ctx, recordKey{}, rec)
}

// From returns the request's Record, or a throwaway one when the request
// did not pass through the access log (so callers never check for nil).
func From(ctx context.Context) *Record {
	if rec, ok := ctx.Value(recordKey{}).(*Record); ok {
		return rec
	}
	return &Record{}
}

type entryKey struct{}

// WithEntry returns ctx marking requests as come in by entry; a listener's
// server sets it in its BaseContext or ConnContext.
func WithEntry(ctx context.Context, e Entry) context.Context {
	return context.WithValue(ctx, entryKey{}, e)
}

// EntryFrom returns the entry point ctx was marked with (EntryForward if none).
func EntryFrom(ctx context.Context) Entry {
	e, _ := ctx.Value(entryKey{}).(Entry)
	return e
}

// Detach returns a context for work that outlives the request (a cache
// fill, a blob download shared by many clients): not canceled with ctx, and
// with its own copy of the request's record, so that what that work records
// never races with the access line of the request that started it. What
// the work recorded comes back to the requests it answers through
// [Record.Report], once it is done writing.
func Detach(ctx context.Context) (context.Context, *Record) {
	cp := *From(ctx)
	cp.Status, cp.UpstreamAddr, cp.BytesIn, cp.BytesOut, cp.Err = 0, "", 0, 0, nil
	return With(context.WithoutCancel(ctx), &cp), &cp
}

// Report brings into r what the stages after a cache recorded on the
// detached copy w (see [Detach]) of the request that started the work, so
// that r's access line, metrics and dashboard show a refusal or failure of
// the upstream call as if r had made it: the stage that refused and why,
// the error, and for that request itself (leader) also the upstream it
// reached and the budget it spent. A request that joined the work (not
// the leader) spent nothing. The caller must not read w while the work
// may still write it.
func (r *Record) Report(w *Record, leader bool) {
	if w.RefusedBy != None {
		r.RefusedBy = w.RefusedBy
	}
	if w.Reason != "" {
		r.Reason = w.Reason
	}
	if w.RuleSet != "" {
		r.RuleSet, r.Check = w.RuleSet, w.Check
	}
	if w.Err != nil {
		r.Err = w.Err
	}
	if leader {
		r.UpstreamAddr, r.Budget, r.Waited = w.UpstreamAddr, w.Budget, w.Waited
	}
}

// ClientIP is the one client-IP function: the record's client (which the
// entry point may have replaced with the real client a trusted proxy
// names), or else the address part of r.RemoteAddr.
func ClientIP(r *http.Request) string {
	if rec, ok := r.Context().Value(recordKey{}).(*Record); ok && rec.ClientIP != "" {
		return rec.ClientIP
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}
