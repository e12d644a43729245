package route

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"sluice/internal/blobs"
	"sluice/internal/cache"
	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/dialer"
	"sluice/internal/dnsserver"
	"sluice/internal/filter"
	"sluice/internal/guardrails"
	"sluice/internal/hostport"
	"sluice/internal/onboard"
	"sluice/internal/policy"
	"sluice/internal/proxy"
	"sluice/internal/resolve"
	"sluice/internal/streams"
	"sluice/internal/throttle"
	"sluice/internal/vault"

	"github.com/redis/go-redis/v9"
)

// Table is the runtime form of one config: the policy and, for each host
// entry that is not denied (and the reverse listener), its route. Every
// string of the config was parsed once, by Compile. A Table is immutable;
// a reload compiles a new one and swaps it in whole.
type Table struct {
	Config *config.Config
	// groupScopes are, by client, the trade limit scopes of its groups
	// (made by Build).
	groupScopes map[string][]guardrails.Scope
	Policy      *policy.Policy
	// Backend is the reverse listener's backend; nil without one.
	Backend *proxy.Backend
	// DNS is what sluice's DNS server answers under this table.
	DNS *dnsserver.Answers
	// Resolvers are dns.resolvers (none: the system's).
	Resolvers []resolve.Server
	// FleetRedis is fleet.redis; nil: no fleet.
	FleetRedis *redis.Options
	// Vault is the clients and the keys sluice holds; nil: no clients named.
	Vault   *vault.Vault
	routes  map[string]*Route // by hosts pattern, and policy.ReverseRule
	handler http.Handler      // the pipeline over this table, once Build ran
}

// Route is what the stages after the policy use for one host entry.
type Route struct {
	Upstream *proxy.Upstream
	Cache    *cache.Rules
	Rules    *filter.Rules  // nil: no request rules
	Throttle throttle.Specs // none: no budget
	Blobs    *blobs.Matcher // nil: no blob store for this host
	Streams  *streams.Spec  // nil: WebSockets spliced per client
	// Groups are the endpoint groups of the host's profile, for clients' grants.
	Groups vault.Groups
	// Settings are the host's effective settings, its profile's merged
	// in, as the route was compiled from them (sluice check --expand).
	Settings Settings
	// handler is the route's tail of the pipeline, made by Table.Build.
	handler http.Handler
}

func (rt *Route) upstream(*http.Request) *proxy.Upstream { return rt.Upstream }

// Settings are the cache, budget and rule settings a host entry ends up
// with once its profile is applied.
type Settings struct {
	Profile  string             `yaml:"profile,omitempty"`
	Cache    config.CacheMode   `yaml:"cache"`
	Rules    []config.CacheRule `yaml:"cache_rules,omitempty"`
	Throttle []config.Throttle  `yaml:"throttle,omitempty"`
	RuleSet  string             `yaml:"rules,omitempty"`
	// RuleSetSettings is the rule set RuleSet names.
	RuleSetSettings *config.RuleSet `yaml:"rule_set,omitempty"`
}

// Expanded returns every host entry's effective settings, by pattern.
func (t *Table) Expanded() map[string]Settings {
	out := map[string]Settings{}
	for pattern := range t.Config.Hosts {
		if rt, ok := t.routes[pattern]; ok {
			out[pattern] = rt.Settings
		}
	}
	return out
}

// Load reads the config file at path and compiles it: every problem of
// the file at once, each with its line. d dials the upstreams (nil: the
// system resolver, nothing counted).
func Load(path string, d *dialer.Dialer) (*Table, error) {
	data, err := config.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	return Parse(data, path, dir, d)
}

// Default compiles the embedded default config, with relative paths
// resolved against the working directory.
func Default(d *dialer.Dialer) (*Table, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	t, err := Parse(config.DefaultYAML(), "(embedded default)", wd, d)
	if err != nil {
		return nil, fmt.Errorf("embedded default config: %w", err)
	}
	return t, nil
}

// Parse decodes, validates and compiles a config file's contents (name
// labels the errors, dir is where its relative paths resolve): what
// `sluice check`, `sluice run`, SIGHUP and PUT /config all do, so a file
// one accepts the others accept.
func Parse(data []byte, name, dir string, d *dialer.Dialer) (*Table, error) {
	cfg, errs := config.Decode(data, name, dir)
	if cfg == nil {
		return nil, errors.Join(errs...)
	}
	t, cerrs := compile(cfg, d)
	if errs = append(errs, cerrs...); len(errs) > 0 {
		return nil, cfg.Locate(errs)
	}
	return t, nil
}

// compile is the one place where regexps, CIDRs, URLs, PEM files, key
// pairs, connect_to addresses and host patterns are parsed; every error
// names its key path.
func compile(cfg *config.Config, d *dialer.Dialer) (*Table, []error) {
	if d == nil {
		d = dialer.New(nil, cfg.Timeouts.Dial.D())
	}
	c := &compiler{cfg: cfg, dialer: d, caFiles: map[string]*x509.CertPool{}, cacheRules: map[string]*cache.Rules{},
		ruleSets: map[string]*filter.Rules{}, throttles: map[string]throttle.Specs{}}
	t := &Table{Config: cfg, routes: map[string]*Route{}}
	var err error
	t.Policy, err = policy.New(cfg.Hosts, cfg.Listen.Reverse != nil, cfg.Policy == config.PolicyReport)
	c.add(err)
	if c.system, err = x509.SystemCertPool(); err != nil {
		return nil, []error{fmt.Errorf("system roots: %w", err)}
	}
	c.globalBlobs, err = blobs.CompilePatterns(cfg.Blobs.Patterns)
	c.add(config.Under(err, "blobs", "patterns"))
	for _, name := range slices.Sorted(maps.Keys(cfg.RuleSets)) {
		if rs := cfg.RuleSets[name]; rs != nil {
			_, err := c.ruleSet(name, rs)
			c.add(config.Under(err, "rule_sets", name))
		}
	}
	for _, e := range t.Policy.Entries() {
		switch e.Host.Mode {
		case config.ModeDeny:
		case config.ModeReport:
			t.routes[e.Pattern] = c.passRoute(e)
		default:
			t.routes[e.Pattern] = c.hostRoute(e)
		}
	}
	if cfg.Policy == config.PolicyReport {
		t.routes[policy.ReportRule] = c.passRoute(&policy.Entry{Pattern: policy.ReportRule})
	}
	if rv := cfg.Listen.Reverse; rv != nil {
		t.Backend, t.routes[policy.ReverseRule] = c.reverse(rv)
	}
	t.Vault, err = vault.Compile(cfg)
	c.add(err)
	if cfg.Fleet.Redis != "" {
		opts, err := redis.ParseURL(cfg.Fleet.Redis)
		c.add(config.Under(err, "fleet", "redis"))
		t.FleetRedis = opts
	}
	for i, r := range cfg.DNS.Resolvers {
		srv, err := resolve.ParseServer(r)
		c.add(config.Under(err, "dns", "resolvers", strconv.Itoa(i)))
		t.Resolvers = append(t.Resolvers, srv)
	}
	allowed := t.Policy.Resolvable
	if cfg.Listen.TransparentHTTP != "" && cfg.Listen.TransparentHTTP != config.Off {
		// The onboarding page, for clients whose only way out is sluice's DNS.
		allowed = func(name string) bool { return name == onboard.Host || t.Policy.Resolvable(name) }
	}
	t.DNS = &dnsserver.Answers{Allowed: allowed, NXDomain: cfg.DNS.Refuse == "nxdomain"}
	for i, a := range cfg.DNS.Answer {
		ip, err := netip.ParseAddr(a)
		switch {
		case err != nil:
			c.add(config.Under(fmt.Errorf("%q is not an IP address", a), "dns", "answer", strconv.Itoa(i)))
		case ip.Unmap().Is4():
			t.DNS.V4 = append(t.DNS.V4, ip.Unmap())
		default:
			t.DNS.V6 = append(t.DNS.V6, ip)
		}
	}
	if len(c.errs) > 0 {
		return nil, c.errs
	}
	return t, nil
}

type compiler struct {
	cfg         *config.Config
	dialer      *dialer.Dialer
	system      *x509.CertPool
	caFiles     map[string]*x509.CertPool
	globalBlobs []*regexp.Regexp
	// Compiled once per Compile, shared by the entries that use them.
	cacheRules map[string]*cache.Rules
	ruleSets   map[string]*filter.Rules
	throttles  map[string]throttle.Specs
	errs       []error
}

// add records err, each of a joined error on its own.
func (c *compiler) add(err error) {
	if err == nil {
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		c.errs = append(c.errs, j.Unwrap()...)
		return
	}
	c.errs = append(c.errs, err)
}

// passRoute is a route that only reaches the upstream (verified, by the
// entry's connect_to and roots): what report mode lets through gets no
// cache, rules, budget or blob store.
func (c *compiler) passRoute(e *policy.Entry) *Route {
	h := &e.Host
	at := func(err error, key string) bool {
		c.add(config.Under(err, "hosts", e.Key, key))
		return err != nil
	}
	route := dialer.Route{AllowPrivate: h.AllowPrivate, Timeout: c.cfg.Timeouts.Dial.D()}
	if h.ConnectTo != "" {
		hp, err := hostport.Parse(h.ConnectTo, 0)
		if !at(err, "connect_to") {
			route.ConnectTo = &hp
		}
	}
	roots, err := c.roots(h.UpstreamCA)
	at(err, "upstream_ca")
	return &Route{Upstream: proxy.NewUpstream(roots, c.dialer, route, c.cfg.Timeouts), Groups: vault.DefaultGroups}
}

func (c *compiler) hostRoute(e *policy.Entry) *Route {
	h, keys := &e.Host, []string{"hosts", e.Key}
	at := func(err error, key ...string) bool {
		c.add(config.Under(err, append(keys[:2:2], key...)...))
		return err != nil
	}
	p, err := profile(e.Key, h)
	c.add(err)
	r := c.passRoute(e)

	var profileRules []config.CacheRule
	if p != nil {
		profileRules = p.Cache.Rules
	}
	r.Cache, err = c.cache(h.Cache, p, profileRules, staleWindow(c.cfg, h.Cache))
	at(err, "cache")
	r.Settings.Cache = cacheMode(h.Cache, profileRules)
	if h.Cache != nil {
		r.Settings.Rules = append(r.Settings.Rules, h.Cache.Rules...)
	}
	r.Settings.Rules = append(r.Settings.Rules, profileRules...)
	if p != nil {
		r.Settings.Profile = p.Name
		r.Groups, err = vault.CompileGroups(p.Groups)
		c.add(config.Under(err, "profile", p.Name))
	}

	if h.Blobs == nil || !h.Blobs.Off {
		var extra []*regexp.Regexp
		var withCreds bool
		if h.Blobs != nil {
			extra, err = blobs.CompilePatterns(h.Blobs.Patterns)
			at(err, "blobs", "patterns")
			withCreds = h.Blobs.WithCredentials
		}
		r.Blobs = blobs.NewMatcher(c.globalBlobs, extra, withCreds)
	}

	name, rs, err := ruleSet(c.cfg, h.Rules, p)
	if !at(err, "rules") {
		r.Rules, err = c.ruleSet(name, rs)
		at(err, "rules")
		r.Settings.RuleSet, r.Settings.RuleSetSettings = name, rs
	}

	r.Throttle, r.Settings.Throttle, err = c.throttle(h, e.Pattern, p)
	at(err, "throttle")
	if p != nil {
		r.Streams, err = streams.Compile(p.Streams, h.Streams)
		at(err, "streams")
	}
	return r
}

// cache compiles a cache mode with the host's own rules before its
// profile's; one without own rules shares its profile's compiled ones.
func (c *compiler) cache(hc *config.HostCache, p *config.Profile, profileRules []config.CacheRule, stale time.Duration) (*cache.Rules, error) {
	mode := cacheMode(hc, profileRules)
	var own []config.CacheRule
	if hc != nil {
		own = hc.Rules
	}
	memo := ""
	if len(own) == 0 && p != nil {
		memo = fmt.Sprintf("%s|%s|%d", p.Name, mode, stale)
		if r, ok := c.cacheRules[memo]; ok {
			return r, nil
		}
	}
	r, err := cache.Compile(mode, append(append([]config.CacheRule{}, own...), profileRules...), stale)
	if err != nil {
		return nil, config.Under(err, "rules")
	}
	if memo != "" {
		c.cacheRules[memo] = r
	}
	return r, nil
}

func (c *compiler) ruleSet(name string, rs *config.RuleSet) (*filter.Rules, error) {
	if rs == nil {
		return nil, nil
	}
	if r, ok := c.ruleSets[name]; ok {
		return r, nil
	}
	r, err := filter.Compile(name, rs)
	c.ruleSets[name] = r // a broken one is reported once, at rule_sets
	if err != nil {
		if _, own := c.cfg.RuleSets[name]; own {
			return nil, err
		}
		return nil, fmt.Errorf("profile rule set %q: %w", name, err)
	}
	return r, nil
}

// throttle compiles the host's own throttle, or its profile's budgets; it
// returns the settings it compiled with them.
func (c *compiler) throttle(h *config.Host, pattern string, p *config.Profile) (throttle.Specs, []config.Throttle, error) {
	maxWait := c.cfg.Throttle.MaxWait.D()
	if h.Throttle != nil {
		if h.Throttle.Off {
			return nil, nil, nil
		}
		s, err := throttle.Compile(&h.Throttle.Throttle, pattern, maxWait)
		if err != nil {
			return nil, nil, err
		}
		return throttle.Specs{s}, []config.Throttle{h.Throttle.Throttle}, nil
	}
	if p == nil || len(p.Throttle) == 0 {
		return nil, nil, nil
	}
	if s, ok := c.throttles[p.Name]; ok {
		return s, p.Throttle, nil
	}
	s, err := throttle.CompileAll(p.Throttle, pattern, maxWait)
	if err != nil {
		return nil, nil, fmt.Errorf("profile %s: %w", p.Name, err)
	}
	c.throttles[p.Name] = s
	return s, p.Throttle, nil
}

// roots returns the system roots plus the PEM certificates in file.
func (c *compiler) roots(file string) (*x509.CertPool, error) {
	if file == "" {
		return c.system, nil
	}
	if p, ok := c.caFiles[file]; ok {
		return p, nil
	}
	data, err := config.ReadFile(c.cfg.Path(file))
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		return c.system, fmt.Errorf("%s: %w", file, pe.Err) // named as the config wrote it
	} else if err != nil {
		return c.system, err
	}
	p := c.system.Clone()
	if !p.AppendCertsFromPEM(data) {
		return c.system, fmt.Errorf("%s holds no PEM certificate", file)
	}
	c.caFiles[file] = p
	return p, nil
}

// reverse compiles the reverse listener: its backend's origin, trusted
// proxies and certificate, and its route.
func (c *compiler) reverse(rv *config.Reverse) (*proxy.Backend, *Route) {
	at := func(err error, key ...string) bool {
		c.add(config.Under(err, append([]string{"listen", "reverse"}, key...)...))
		return err != nil
	}
	b := &proxy.Backend{}
	u, err := url.Parse(rv.Backend)
	switch {
	case err != nil:
		at(err, "backend")
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		at(fmt.Errorf("%q: want http://host:port or https://host:port", rv.Backend), "backend")
	case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil:
		at(fmt.Errorf("%q: the backend is an origin only, without path, query or user", rv.Backend), "backend")
	default:
		b.Scheme = decision.HTTP
		if u.Scheme == "https" {
			b.Scheme = decision.HTTPS
		}
		b.Target, err = hostport.Parse(u.Host, b.Scheme.DefaultPort())
		at(err, "backend")
	}
	b.Trusted, err = config.ParsePrefixes(rv.TrustedProxies)
	at(err, "trusted_proxies")
	if rv.TLSCert != "" && rv.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(c.cfg.Path(rv.TLSCert), c.cfg.Path(rv.TLSKey))
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			name := rv.TLSKey // named as the config wrote it
			if pe.Path == c.cfg.Path(rv.TLSCert) {
				name = rv.TLSCert
			}
			err = fmt.Errorf("%s: %w", name, pe.Err)
		}
		if !at(err, "tls_cert") {
			b.Cert = &cert
		}
	}
	roots, err := c.roots(rv.BackendCA)
	at(err, "backend_ca")
	r := &Route{
		// The backend is the operator's own server, usually on a private
		// address: the SSRF guard is for what clients ask, not for this.
		Upstream: proxy.NewUpstream(roots, c.dialer, dialer.Route{AllowPrivate: true, Timeout: c.cfg.Timeouts.Dial.D()}, c.cfg.Timeouts),
	}
	r.Cache, err = c.cache(rv.Cache, nil, nil, c.cfg.Cache.StaleIfError.D())
	at(err, "cache")
	if rv.Rules != nil && !rv.Rules.Off {
		name, rs, err := ruleSet(c.cfg, rv.Rules, nil)
		if !at(err, "rules") {
			r.Rules, err = c.ruleSet(name, rs)
			at(err, "rules")
		}
	}
	return b, r
}

// Close releases the idle upstream connections of a replaced table.
func (t *Table) Close() {
	for _, r := range t.routes {
		r.Upstream.Close()
	}
}

// LeafAllowed is the CA's veto: leaves only for hosts intercepted by this table.
func (t *Table) LeafAllowed(host string) error {
	e := t.Policy.Lookup(host)
	if e == nil || e.Host.Mode != config.ModeIntercept {
		return errors.New("host is not intercepted by the current config")
	}
	return nil
}
