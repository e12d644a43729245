// Package policy decides, for a target host, port and scheme, whether sluice
// denies, tunnels or intercepts; its stage answers a denied request 403
// with the config key that would allow it. Deciding is pure: no I/O, no
// clock, no DNS. Config keys: hosts (pattern -> mode, ports, plain_http, ...).
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/hostport"
)

// Entry is one host entry of the config, compiled.
type Entry struct {
	// Pattern is the normalised config key: "api.example.com" or "*.example.com".
	Pattern string
	// Key is the config key as written, for messages that name it.
	Key  string
	Host config.Host
}

// Policy maps targets to decisions. It is immutable and safe for concurrent use.
type Policy struct {
	exact     map[string]*Entry
	wildcards []*Entry // longest suffix first, so the most specific entry wins
	reverse   bool
	report    bool // policy: report
}

// ReverseRule is the Rule of requests to the reverse listener's backend.
const ReverseRule = "listen.reverse"

// ReportRule is the Rule of requests that policy: report lets through
// without a matching entry.
const ReportRule = "policy.report"

// New compiles the host entries of a validated config; reverse says whether
// the config has a reverse listener, whose requests all go to its backend;
// report is policy: report.
// Every bad or duplicate host key is reported, each at its key path; the
// Policy returned holds the good ones, so that a compile goes on to report
// every other problem too.
func New(hosts map[string]*config.Host, reverse, report bool) (*Policy, error) {
	p := &Policy{exact: map[string]*Entry{}, reverse: reverse, report: report}
	var errs []error
	byPattern := map[string]string{}
	for _, key := range slices.Sorted(maps.Keys(hosts)) {
		pattern, err := hostport.ParsePattern(key)
		if err != nil {
			errs = append(errs, config.Under(err, "hosts", key))
			continue
		}
		if other, dup := byPattern[pattern]; dup {
			errs = append(errs, config.Under(fmt.Errorf("same host as %q", other), "hosts", key))
			continue
		}
		byPattern[pattern] = key
		e := &Entry{Pattern: pattern, Key: key, Host: *hosts[key]}
		if strings.HasPrefix(pattern, "*.") {
			p.wildcards = append(p.wildcards, e)
		} else {
			p.exact[pattern] = e
		}
	}
	slices.SortFunc(p.wildcards, func(a, b *Entry) int {
		return cmp.Or(cmp.Compare(len(b.Pattern), len(a.Pattern)), strings.Compare(a.Pattern, b.Pattern))
	})
	return p, errors.Join(errs...)
}

// Entries returns every entry, exact ones first; callers must not modify them.
func (p *Policy) Entries() []*Entry {
	out := make([]*Entry, 0, len(p.exact)+len(p.wildcards))
	for _, e := range p.exact {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *Entry) int { return strings.Compare(a.Pattern, b.Pattern) })
	return append(out, p.wildcards...)
}

// Lookup returns the entry for a normalised host, or nil.
func (p *Policy) Lookup(host string) *Entry {
	if e, ok := p.exact[host]; ok {
		return e
	}
	for _, e := range p.wildcards {
		if strings.HasSuffix(host, e.Pattern[1:]) { // "*.a.com" -> ".a.com"
			return e
		}
	}
	return nil
}

// Resolvable reports whether sluice's DNS server answers a normalised
// name with sluice's addresses: an entry that does not deny it covers it,
// or report mode is on and no entry denies it.
func (p *Policy) Resolvable(name string) bool {
	e := p.Lookup(name)
	if e == nil {
		return p.report
	}
	return e.Host.Mode != config.ModeDeny
}

// A Decision records what the policy decided for one target and why.
type Decision struct {
	Action decision.Action
	Target hostport.HostPort
	// Entry is the matching entry; nil when no entry matches.
	Entry *Entry
	// Reason is a short phrase for logs and errors, e.g. "host not listed".
	Reason string
	// Fix names the config key that would allow the target, for denials.
	Fix string
	// Report, when set, is why enforce would have refused the target
	// that report mode lets through (Fix then says what would allow it).
	Report string
}

// Rule returns the matching entry's pattern, ReportRule for a target that
// report mode lets through without one, or "" when none matched.
func (d Decision) Rule() string {
	switch {
	case d.Entry != nil:
		return d.Entry.Pattern
	case d.Report != "":
		return ReportRule
	}
	return ""
}

// DecideRecord returns the decision for a request or CONNECT by its entry
// point, target and scheme: a reverse listener's requests go to its
// backend; a tunneled host may be reached by CONNECT only, since reading
// its requests would be the interception its entry forbids.
func (p *Policy) DecideRecord(rec *decision.Record) Decision {
	if rec.Entry == decision.EntryReverse {
		if !p.reverse {
			return Decision{Action: decision.Deny, Target: rec.Target, Reason: "no reverse backend",
				Fix: "listen.reverse was removed from the config; restart sluice to close this listener"}
		}
		return Decision{Action: decision.Reverse, Target: rec.Target, Reason: decision.Reverse.String()}
	}
	d := p.Decide(rec.Target, rec.Scheme)
	if d.Report != "" && !rec.Entry.Connection() {
		// A plain request goes out as it came, on a route with no cache,
		// rules or budget, as a tunnel would carry it.
		d.Action = decision.Intercept
	}
	if d.Action == decision.Tunnel && !rec.Entry.Connection() {
		d.Action, d.Reason = decision.Deny, "host is tunneled, not intercepted"
		d.Fix = "use CONNECT, or set " + config.KeyPath("hosts", d.Entry.Key, "mode") + " to intercept"
	}
	return d
}

// rule is what the decision record names as the matching rule: the entry's
// pattern, or the reverse listener's key.
func (d Decision) rule() string {
	if d.Action == decision.Reverse {
		return ReverseRule
	}
	return d.Rule()
}

// Decide returns the decision for target reached with scheme. What enforce
// would refuse, report mode (policy: report, or the entry's mode: report)
// tunnels, noting why in Report; an entry's mode: deny is always refused.
func (p *Policy) Decide(target hostport.HostPort, scheme decision.Scheme) Decision {
	d := p.enforce(target, scheme)
	if d.Action == decision.Deny && p.reports(d.Entry) {
		d.Action, d.Report, d.Reason = decision.Tunnel, d.Reason, "report"
	}
	return d
}

func (p *Policy) reports(e *Entry) bool {
	if e != nil {
		switch e.Host.Mode {
		case config.ModeReport:
			return true
		case config.ModeDeny:
			return false
		}
	}
	return p.report
}

// enforce returns the decision of enforce mode.
func (p *Policy) enforce(target hostport.HostPort, scheme decision.Scheme) Decision {
	d := Decision{Action: decision.Deny, Target: target, Entry: p.Lookup(target.Host)}
	if d.Entry == nil {
		d.Reason = "host not listed"
		d.Fix = fmt.Sprintf("add %s to hosts", config.KeyPath(target.Host))
		return d
	}
	h := &d.Entry.Host
	key := func(field string) string { return config.KeyPath("hosts", d.Entry.Key, field) }
	switch {
	case h.Mode == config.ModeDeny:
		d.Reason = "host denied by its entry"
		d.Fix = "set " + key("mode") + " to intercept or tunnel"
	case h.Mode == config.ModeReport:
		d.Reason = "host in report mode"
		d.Fix = "set " + key("mode") + " to intercept or tunnel"
		if d.Entry.Pattern != target.Host {
			d.Fix = fmt.Sprintf("add %s to hosts", config.KeyPath(target.Host))
		}
	case scheme == decision.HTTP && !h.PlainHTTP:
		// Before the port: plain_http is what allows it (and port 80 with it).
		d.Reason = "plain http not allowed"
		d.Fix = "set " + key("plain_http") + ": true"
	case !slices.Contains(h.Ports, target.Port):
		d.Reason = fmt.Sprintf("port %d not allowed", target.Port)
		d.Fix = fmt.Sprintf("add %d to %s", target.Port, key("ports"))
	case h.Mode == config.ModeTunnel:
		d.Action, d.Reason = decision.Tunnel, decision.Tunnel.String()
	default:
		d.Action, d.Reason = decision.Intercept, decision.Intercept.String()
	}
	return d
}
