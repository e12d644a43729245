package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"sluice/internal/bodymem"
	"sluice/internal/decision"
	"sluice/internal/obs"
)

// ClientKey is what a named client (clients:) is counted and banned as.
func ClientKey(name string) string { return "client:" + name }

// BanGate is the ban stage: a banned client (its address, or once named
// its name) is answered 403 before anything of its request is read, and
// its connection is closed. A nil list bans no one.
func BanGate(bans *Bans) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if bans == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := decision.From(r.Context())
			b, banned := bans.Banned(r.Context(), decision.ClientIP(r))
			if !banned && rec.Client != "" {
				b, banned = bans.Banned(r.Context(), ClientKey(rec.Client))
			}
			if !banned {
				next.ServeHTTP(w, r)
				return
			}
			rec.Refuse(decision.Ban, "client banned")
			w.Header().Set("Retry-After", strconv.Itoa(int(time.Until(b.Until).Seconds())+1))
			w.Header().Set("Connection", "close") // do not read what the client sends next
			obs.WriteError(w, r, &obs.Error{Status: http.StatusForbidden, Msg: "client banned",
				Detail:      fmt.Sprintf("%s is banned until %s (%s)", b.Client, b.Until.UTC().Format(time.RFC3339), b.Reason),
				ProxyStatus: "http_request_denied"})
		})
	}
}

// Middleware is the rule stage: a request that breaks its route's rule set
// (of returns it; nil: no rules) is answered 4xx and never forwarded. The
// head is checked first, then the body: read whole for the JSON checks, or
// cut off while it streams past max_body_bytes. Each violation counts
// toward a ban (bans may be nil) and is logged as one stable line.
func Middleware(log *slog.Logger, bans *Bans, of func(*http.Request) *Rules) func(http.Handler) http.Handler {
	g := &gate{log: log, bans: bans}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rules := of(r)
			if rules == nil {
				next.ServeHTTP(w, r)
				return
			}
			v := rules.CheckHead(r)
			if v == nil {
				var err error
				if v, err = rules.CheckBody(r); err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						obs.WriteBodyTimeout(w, r, err)
						return
					}
					if errors.Is(err, bodymem.ErrFull) {
						// The rules must read it whole and cannot: never
						// forwarded unchecked, never more memory.
						w.Header().Set("Retry-After", "1")
						w.Header().Set("Connection", "close")
						obs.WriteError(w, r, &obs.Error{Status: http.StatusServiceUnavailable, Msg: "request body not read",
							Host:   decision.From(r.Context()).Target.String(),
							Detail: "the rules of this host read the body whole, and " + err.Error() + " by other requests; retry shortly", Err: err})
						return
					}
					obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "cannot read the request body",
						Host: decision.From(r.Context()).Target.String(), Err: err})
					return
				}
			}
			if v != nil {
				g.refuse(w, r, rules, v)
				return
			}
			if lb, ok := r.Body.(*limitedBody); ok {
				lb.err = &cutOff{g: g, rules: rules}
			}
			next.ServeHTTP(w, r)
		})
	}
}

type gate struct {
	log  *slog.Logger
	bans *Bans
}

// refuse answers a broken rule, counts it toward a ban, and logs one stable
// line per violation (for fail2ban and friends).
func (g *gate) refuse(w http.ResponseWriter, r *http.Request, rules *Rules, v *Violation) {
	rec := decision.From(r.Context())
	client := decision.ClientIP(r)
	if rec.Client != "" {
		// A named client is banned by its name: its address may be shared
		// (one gateway host, one NAT), and it may move.
		client = ClientKey(rec.Client)
	}
	banned := g.bans != nil && g.bans.Strike(r.Context(), client, rules, v)
	g.log.Warn("rule_violation", "client_ip", client, "rule", rules.Name, "check", v.Check, "method", r.Method,
		"host", rec.Target.String(), "path", r.URL.Path, "banned", banned)
	rec.Refuse(decision.Rules, "rule_violation: "+v.Check)
	rec.RuleSet, rec.Check = rules.Name, v.Check
	if rules.EOSIOAnswer {
		// The answer of the node filter sluice replaces, for its clients.
		body, _ := json.Marshal(map[string]any{"message": v.Check + ": " + v.Detail, "code": 400})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-REJECTED-BY", "sluice/"+rules.Name)
		w.WriteHeader(http.StatusBadRequest)
		w.Write(body)
		return
	}
	obs.WriteError(w, r, &obs.Error{Status: v.Status, Msg: "rule_violation", Rule: rules.Name, Detail: v.Detail,
		ProxyStatus: "http_request_denied"})
}

var _ error = (*cutOff)(nil)

// cutOff is the error a streaming body fails with past max_body_bytes. The
// forwarder, seeing it in its upstream error, lets it answer: the refusal
// is the rule stage's, like every other violation.
type cutOff struct {
	g     *gate
	rules *Rules
}

func (e *cutOff) Error() string        { return errTooLarge.Error() }
func (e *cutOff) Is(target error) bool { return target == errTooLarge }

// Answer writes the 413 violation for the cut-off body.
func (e *cutOff) Answer(w http.ResponseWriter, r *http.Request) {
	e.g.refuse(w, r, e.rules, &Violation{Status: http.StatusRequestEntityTooLarge,
		Check: CheckBodyBytes, Detail: "body longer than max_body_bytes (cut off while streaming)"})
}
