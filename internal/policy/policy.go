// Package policy decides, for a target host, port and scheme, whether sluice
// denies, tunnels or intercepts. It is pure: no I/O, no clock, no DNS.
// Config keys: hosts (pattern -> mode, ports, plain_http, ...).
package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"sluice/internal/config"
	"sluice/internal/hostport"
)

// Action is what happens to a connection or request.
type Action int

const (
	Deny Action = iota
	Tunnel
	Intercept
)

func (a Action) String() string {
	switch a {
	case Tunnel:
		return "tunnel"
	case Intercept:
		return "intercept"
	}
	return "deny"
}

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
}

// New compiles the host entries of a validated config.
func New(hosts map[string]*config.Host) (*Policy, error) {
	p := &Policy{exact: map[string]*Entry{}}
	for key, h := range hosts {
		pattern, err := hostport.ParsePattern(key)
		if err != nil {
			return nil, err
		}
		e := &Entry{Pattern: pattern, Key: key, Host: *h}
		if strings.HasPrefix(pattern, "*.") {
			p.wildcards = append(p.wildcards, e)
		} else {
			p.exact[pattern] = e
		}
	}
	slices.SortFunc(p.wildcards, func(a, b *Entry) int {
		return cmp.Or(cmp.Compare(len(b.Pattern), len(a.Pattern)), strings.Compare(a.Pattern, b.Pattern))
	})
	return p, nil
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

// Scheme is how the client reaches the target through sluice.
type Scheme int

const (
	// HTTPS is a CONNECT, or a request inside an intercepted CONNECT.
	HTTPS Scheme = iota
	// HTTP is an absolute-URI plain-HTTP request ("GET http://...").
	HTTP
)

// A Decision records what the policy decided for one target and why.
type Decision struct {
	Action Action
	Target hostport.HostPort
	// Entry is the matching entry; nil when no entry matches.
	Entry *Entry
	// Reason is a short phrase for logs and errors, e.g. "host not listed".
	Reason string
	// Fix names the config key that would allow the target, for denials.
	Fix string
}

// Rule returns the matching entry's pattern, or "" when none matched.
func (d Decision) Rule() string {
	if d.Entry == nil {
		return ""
	}
	return d.Entry.Pattern
}

// Decide returns the decision for target reached with scheme.
func (p *Policy) Decide(target hostport.HostPort, scheme Scheme) Decision {
	d := Decision{Target: target, Entry: p.Lookup(target.Host)}
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
	case !slices.Contains(h.Ports, target.Port):
		d.Reason = fmt.Sprintf("port %d not allowed", target.Port)
		d.Fix = fmt.Sprintf("add %d to %s", target.Port, key("ports"))
	case scheme == HTTP && !h.PlainHTTP:
		d.Reason = "plain http not allowed"
		d.Fix = "set " + key("plain_http") + ": true"
	case h.Mode == config.ModeTunnel:
		d.Action, d.Reason = Tunnel, "tunnel"
	default:
		d.Action, d.Reason = Intercept, "intercept"
	}
	return d
}
