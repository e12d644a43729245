package config

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// FieldError is a problem with one config value, named by its key path.
type FieldError struct {
	// Keys is the path from the document root, e.g. ["hosts", "a.com", "ports"].
	Keys []string
	Err  error
}

func (e *FieldError) Error() string { return KeyPath(e.Keys...) + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// KeyPath renders keys as a user would find them: hosts."*.a.com".mode.
func KeyPath(keys ...string) string {
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('.')
		}
		if strings.ContainsAny(k, ".*: ") {
			k = strconv.Quote(k)
		}
		b.WriteString(k)
	}
	return b.String()
}

func fieldErr(err error, keys ...string) error { return &FieldError{Keys: keys, Err: err} }

// validate checks the whole config and returns every problem found.
func (c *Config) validate() []error {
	var errs []error
	add := func(err error, keys ...string) { errs = append(errs, fieldErr(err, keys...)) }

	switch {
	case c.DataDir == "":
		add(errors.New("no default: XDG_DATA_HOME, HOME and STATE_DIRECTORY are all unset; set data_dir to the directory for sluice's CA, token and store"), "data_dir")
	case strings.HasPrefix(c.DataDir, "~/") && !filepath.IsAbs(os.Getenv("HOME")):
		add(fmt.Errorf("%q starts with ~/ but HOME is not set; give an absolute path", c.DataDir), "data_dir")
	}

	seen := map[string]string{}
	for _, l := range c.Listen.Named() {
		if l.Addr == Off {
			if l.Key == "proxy" {
				add(errors.New("the forward proxy listener cannot be off"), "listen", l.Key)
			}
			continue
		}
		at := append([]string{"listen"}, l.Path...)
		ap, err := netip.ParseAddrPort(l.Addr)
		if err != nil {
			add(fmt.Errorf("%q is not IP:port (example: 127.0.0.1:3128)", l.Addr), at...)
			continue
		}
		if other, dup := seen[ap.String()]; dup && ap.Port() != 0 {
			add(fmt.Errorf("%s is also listen.%s", l.Addr, other), at...)
		}
		seen[ap.String()] = l.Key
	}

	if r := c.Listen.Reverse; r != nil {
		errs = append(errs, r.validate(seen)...)
	}
	errs = append(errs, c.DNS.validate(c.Listen.DNS != Off)...)
	if c.Fleet.Redis != "" {
		if c.Fleet.Instance == "" {
			add(errors.New("the host has no name: give this instance one"), "fleet", "instance")
		}
		if c.Fleet.Timeout <= 0 {
			add(errors.New("must be positive"), "fleet", "timeout")
		}
		if c.Fleet.Cache && c.Fleet.CacheMaxBytes < c.Cache.MaxObjectBytes {
			add(fmt.Errorf("must hold at least one object of cache.max_object_bytes (%d)", c.Cache.MaxObjectBytes), "fleet", "cache_max_bytes")
		}
	} else if c.Fleet.Cache {
		add(errors.New("needs fleet.redis: the fleet cache is kept in Redis"), "fleet", "cache")
	}

	errs = append(errs, c.validateClients()...)
	for _, pattern := range slices.Sorted(maps.Keys(c.Hosts)) {
		errs = append(errs, c.Hosts[pattern].validate(pattern)...)
	}

	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"dial", c.Timeouts.Dial}, {"tls_handshake", c.Timeouts.TLSHandshake},
		{"response_header", c.Timeouts.ResponseHeader}, {"client_idle", c.Timeouts.ClientIdle},
		{"tunnel_idle", c.Timeouts.TunnelIdle}, {"shutdown", c.Timeouts.Shutdown}, {"body_idle", c.Timeouts.BodyIdle},
		{"body", c.Timeouts.Body}, {"request_header", c.Timeouts.RequestHeader},
	} {
		if d.v <= 0 {
			add(errors.New("must be positive"), "timeouts", d.key)
		}
	}
	if c.Limits.BodyRateWindow <= 0 {
		add(errors.New("must be positive"), "limits", "body_rate_window")
	}
	if n := c.Limits.ConnectionsPerClient; n != nil && *n < 0 {
		add(errors.New("must not be negative (0 is no cap)"), "limits", "connections_per_client")
	}
	if r := c.Limits.BodyMinRate; r != nil && *r < 0 {
		add(errors.New("must not be negative (0 is no minimum)"), "limits", "body_min_rate")
	}
	if c.Limits.BufferedBodies < 2<<20 {
		add(errors.New("must be at least 2MiB: one body of up to 1MiB read whole, with room"), "limits", "buffered_bodies")
	}
	if c.Log.File != "" && c.Log.MaxSize < 1<<20 {
		add(errors.New("must be at least 1MiB"), "log", "max_size")
	}
	if c.Log.MaxFiles < 0 {
		add(errors.New("must not be negative"), "log", "max_files")
	}
	if e := c.Blobs.ScrubEvery; e < 0 || e > 0 && e < Duration(time.Minute) {
		add(errors.New("must be at least 1m (leave it out for no scrub)"), "blobs", "scrub_every")
	}
	if c.Blobs.WhenClientsLeave != "finish" && c.Blobs.WhenClientsLeave != "abort" {
		add(fmt.Errorf("%q is not one of finish, abort", c.Blobs.WhenClientsLeave), "blobs", "when_clients_leave")
	}
	for _, name := range slices.Sorted(maps.Keys(c.RuleSets)) {
		if rs := c.RuleSets[name]; rs == nil {
			add(errors.New("empty rule set"), "rule_sets", name)
		} else if err := rs.validate(); err != nil {
			add(err, "rule_sets", name)
		}
	}
	if c.Throttle.MaxWait <= 0 {
		add(errors.New("must be positive"), "throttle", "max_wait")
	}
	if p := c.Bans.AuthFailures; p.Violations < 1 || p.Window <= 0 || p.Duration <= 0 {
		add(errors.New("violations, window and duration must be positive"), "bans", "auth_failures")
	}
	if p := c.Bans.IPv6Prefix; p < 1 || p > 128 {
		add(fmt.Errorf("%d is not a prefix length (1 to 128)", p), "bans", "ipv6_prefix")
	}
	if c.Cache.MaxObjectBytes > c.Cache.MaxBytes {
		add(errors.New("must not exceed cache.max_bytes"), "cache", "max_object_bytes")
	}
	if *c.Cache.StaleIfError < 0 {
		add(errors.New("must not be negative"), "cache", "stale_if_error")
	}
	if g := c.Cache.RefreshGrace; g != nil && *g < 0 {
		add(errors.New("must not be negative"), "cache", "refresh_grace")
	}
	if v := c.CA.LeafValidity.D(); v < time.Hour || v > 397*24*time.Hour {
		add(errors.New("must be between 1h and 9528h (397 days, the browser limit)"), "ca", "leaf_validity")
	}
	if c.CA.LeafCacheSize < 1 {
		add(errors.New("must be at least 1"), "ca", "leaf_cache_size")
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		add(fmt.Errorf("%q is not one of debug, info, warn, error", c.Log.Level), "log", "level")
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		add(fmt.Errorf("%q is not one of json, text", c.Log.Format), "log", "format")
	}
	return errs
}

func (h *Host) validate(pattern string) []error {
	var errs []error
	add := func(err error, key string) { errs = append(errs, fieldErr(err, "hosts", pattern, key)) }
	for _, p := range h.Ports {
		if p == 0 {
			add(errors.New("port 0 is not a port"), "ports")
		}
	}
	if h.Cache != nil {
		for i, r := range h.Cache.Rules {
			if err := r.validate(); err != nil {
				errs = append(errs, fieldErr(err, "hosts", pattern, "cache", "rules", strconv.Itoa(i)))
			}
		}
		if h.Cache.StaleIfError != nil && *h.Cache.StaleIfError < 0 {
			add(errors.New("stale_if_error must not be negative"), "cache")
		}
	}
	if h.Throttle != nil && !h.Throttle.Off {
		if err := h.Throttle.validate(); err != nil {
			add(err, "throttle")
		}
	}
	if h.Mode == ModeTunnel && h.PlainHTTP {
		add(errors.New("a tunnel carries CONNECTs only, so plain HTTP to it can never be allowed; use mode: intercept, or drop plain_http"), "plain_http")
	}
	if strings.HasPrefix(pattern, "*.") && h.ConnectTo != "" {
		add(errors.New("a wildcard entry cannot have one connect_to address for many hosts"), "connect_to")
	}
	return errs
}

// located prefixes each validation error with name:line, found by walking
// the YAML document along the error's key path, and sorts them by line.
// Errors whose key is absent from the file (a default) get the name only.
func located(name string, root *yaml.Node, errs []error) []error {
	type lineErr struct {
		line int
		err  error
	}
	les := make([]lineErr, 0, len(errs))
	for _, err := range errs {
		var fe *FieldError
		if errors.As(err, &fe) {
			if line := lineOf(root, fe.Keys); line > 0 {
				les = append(les, lineErr{line, fmt.Errorf("%s:%d: %w", name, line, err)})
			} else {
				les = append(les, lineErr{0, fmt.Errorf("%s: %w", name, err)})
			}
			continue
		}
		// Decoding errors name their file and line already: sorted by it.
		parts := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			parts = j.Unwrap()
		}
		for _, e := range parts {
			num, _, _ := strings.Cut(strings.TrimPrefix(e.Error(), name+":"), ":")
			line, _ := strconv.Atoi(num)
			les = append(les, lineErr{line, e})
		}
	}
	slices.SortStableFunc(les, func(a, b lineErr) int { return a.line - b.line })
	out := make([]error, len(les))
	for i, le := range les {
		out[i] = le.err
	}
	return out
}

// lineOf returns the line of the deepest key of keys found in the document.
func lineOf(n *yaml.Node, keys []string) int {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, k := range keys {
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == k {
					line, next = n.Content[i].Line, n.Content[i+1]
					break
				}
			}
		case yaml.SequenceNode: // a list element, by its index
			if i, err := strconv.Atoi(k); err == nil && i >= 0 && i < len(n.Content) {
				line, next = n.Content[i].Line, n.Content[i]
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

func (r *Reverse) validate(seen map[string]string) []error {
	var errs []error
	add := func(err error, key string) { errs = append(errs, fieldErr(err, "listen", "reverse", key)) }
	if ap, err := netip.ParseAddrPort(r.Addr); err != nil {
		add(fmt.Errorf("%q is not IP:port (example: 127.0.0.1:8080)", r.Addr), "addr")
	} else if other, dup := seen[ap.String()]; dup && ap.Port() != 0 {
		add(fmt.Errorf("%s is also listen.%s", r.Addr, other), "addr")
	}
	if (r.TLSCert == "") != (r.TLSKey == "") {
		add(errors.New("give both tls_cert and tls_key, or neither"), "tls_cert")
	}
	if r.ProxyProtocol && len(r.TrustedProxies) == 0 {
		add(errors.New("proxy_protocol needs trusted_proxies: only they may name the client"), "proxy_protocol")
	}
	if r.Cache != nil {
		for i, ru := range r.Cache.Rules {
			if err := ru.validate(); err != nil {
				errs = append(errs, fieldErr(err, "listen", "reverse", "cache", "rules", strconv.Itoa(i)))
			}
		}
	}
	return errs
}

// ParsePrefix parses a client address as the config writes one, an IP
// ("192.0.2.1", one address) or a CIDR ("10.0.0.0/8"), into its network:
// masked, and an IPv4-mapped IPv6 form taken as the IPv4 it maps. It is
// the one parser of client addresses (clients.NAME.addresses,
// listen.reverse.trusted_proxies, sluice firewall --clients).
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked(), nil
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP or CIDR", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ClientNetwork is the network a client address is counted and banned by
// (bans.ipv6_prefix): an IPv4 address alone, an IPv6 address by its
// /ipv6Prefix, since one host usually holds a whole /64 (0, or 128 and
// more, count each IPv6 address alone).
func ClientNetwork(a netip.Addr, ipv6Prefix int) netip.Prefix {
	a = a.Unmap()
	bits := a.BitLen()
	if a.Is6() && ipv6Prefix > 0 && ipv6Prefix < 128 {
		bits = ipv6Prefix
	}
	p, _ := a.Prefix(bits)
	return p
}

// ParsePrefixes is ParsePrefix of each of ss.
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Locate prefixes each error of errs that names a key path (a [FieldError])
// with the config's file name and the line of that key, as Parse reports
// its own, and joins them: the compile step's errors read like Parse's.
func (c *Config) Locate(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	root := c.root
	if root == nil {
		root = &yaml.Node{}
	}
	return errors.Join(located(c.name, root, errs)...)
}

// Under returns err as a [FieldError] at the key path keys; an error that
// already names a path (relative to keys) gets keys put before it.
func Under(err error, keys ...string) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		out := make([]error, len(errs))
		for i, e := range errs {
			out[i] = Under(e, keys...)
		}
		return errors.Join(out...)
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Keys: append(slices.Clone(keys), fe.Keys...), Err: fe.Err}
	}
	return &FieldError{Keys: slices.Clone(keys), Err: err}
}

// FoldRegexp compiles a path regexp that matches ignoring case (deny rules,
// budgets: a spelling must not slip past them); an error quotes expr as
// the config wrote it.
func FoldRegexp(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("(?i)" + expr)
	var se *syntax.Error
	if errors.As(err, &se) {
		se.Expr = strings.TrimPrefix(se.Expr, "(?i)")
	}
	return re, err
}

func (d *DNS) validate(serving bool) []error {
	var errs []error
	add := func(err error, keys ...string) {
		errs = append(errs, fieldErr(err, append([]string{"dns"}, keys...)...))
	}
	if serving && len(d.Answer) == 0 {
		add(errors.New("listen.dns is set: list the addresses at which clients reach sluice (example: [192.0.2.10])"), "answer")
	}
	if d.Refuse != "refused" && d.Refuse != "nxdomain" {
		add(fmt.Errorf("%q is not one of refused, nxdomain", d.Refuse), "refuse")
	}
	if d.Pin != "first" && d.Pin != Off {
		add(fmt.Errorf("%q is not one of first, off", d.Pin), "pin")
	}
	if d.Recheck < Duration(time.Minute) {
		add(errors.New("must be at least 1m"), "recheck")
	}
	return errs
}
