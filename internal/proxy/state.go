package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"sluice/internal/blobs"
	"sluice/internal/cache"
	"sluice/internal/config"
	"sluice/internal/dialer"
	"sluice/internal/filter"
	"sluice/internal/hostport"
	"sluice/internal/policy"
	"sluice/internal/throttle"
)

// state is everything that a config reload replaces at once.
type state struct {
	cfg       *config.Config
	policy    *policy.Policy
	upstreams map[string]*upstream // by policy.Entry.Pattern
	// reverse is the reverse listener's backend (nil without one).
	reverse        *upstream
	reverseTarget  *target
	reverseTrusted trusted
	reverseCert    *tls.Certificate // nil: plain HTTP
}

// upstream is how sluice reaches the hosts of one entry: its own dialer
// route, a pooled, verifying transport (HTTP/2 when the upstream offers
// it) and its cache rules.
type upstream struct {
	route     dialer.Route
	transport *http.Transport
	cache     *cache.Rules
	throttle  throttle.Specs // none: no budget
	blobs     *blobs.Matcher // nil: no blob store for this host
	rules     *filter.Rules  // nil: no request rules
}

func (s *Server) newState(cfg *config.Config) (*state, error) {
	pol, err := policy.New(cfg.Hosts)
	if err != nil {
		return nil, err
	}
	d := dialer.New(s.resolver, cfg.Timeouts.Dial.D())
	d.OnRefuse = func(c dialer.Class) { s.metrics.refused.WithLabelValues(c.String()).Inc() }
	st := &state{cfg: cfg, policy: pol, upstreams: map[string]*upstream{}}
	for _, e := range pol.Entries() {
		if e.Host.Mode == config.ModeDeny {
			continue
		}
		mode, rules := config.CacheFor(&e.Host)
		u, err := newUpstream(cfg, e.Host.UpstreamCA, dialer.Route{AllowPrivate: e.Host.AllowPrivate}, e.Host.ConnectTo, d)
		if err == nil {
			u.cache, err = cache.Compile(mode, rules, cfg.StaleWindow(&e.Host))
		}
		if err == nil && (e.Host.Blobs == nil || !e.Host.Blobs.Off) {
			var extra []string
			var withCreds bool
			if e.Host.Blobs != nil {
				extra, withCreds = e.Host.Blobs.Patterns, e.Host.Blobs.WithCredentials
			}
			u.blobs, err = blobs.NewMatcher(cfg.Blobs.Patterns, extra, withCreds)
		}
		if err == nil {
			u.rules, err = filter.Compile(cfg.RuleSetFor(&e.Host))
		}
		if err == nil {
			u.throttle, err = throttle.CompileAll(config.ThrottlesFor(&e.Host, e.Pattern, e.Pattern), e.Pattern, cfg.Throttle.MaxWait.D())
		}
		if err != nil {
			return nil, fmt.Errorf("hosts.%s: %w", e.Key, err)
		}
		st.upstreams[e.Pattern] = u
	}
	if r := cfg.Listen.Reverse; r != nil {
		// The backend is the operator's own server, usually on a private
		// address: the SSRF guard is for what clients ask, not for this.
		u, err := newUpstream(cfg, r.BackendCA, dialer.Route{AllowPrivate: true}, "", d)
		if err == nil {
			mode, rules := r.CacheFor()
			u.cache, err = cache.Compile(mode, rules, cfg.Cache.StaleIfError.D())
		}
		if err == nil && r.Rules != nil && !r.Rules.Off {
			u.rules, err = filter.Compile(cfg.RuleSetFor(&config.Host{Rules: r.Rules}))
		}
		if err != nil {
			return nil, fmt.Errorf("listen.reverse: %w", err)
		}
		backend, _ := url.Parse(r.Backend) // validated by config
		scheme, port := policy.HTTP, uint16(80)
		if backend.Scheme == "https" {
			scheme, port = policy.HTTPS, 443
		}
		hp, err := hostport.Parse(backend.Host, port)
		if err != nil {
			return nil, fmt.Errorf("listen.reverse.backend: %w", err)
		}
		if st.reverseTrusted, err = config.ParsePrefixes(r.TrustedProxies); err != nil {
			return nil, fmt.Errorf("listen.reverse.trusted_proxies: %w", err)
		}
		if r.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(cfg.Path(r.TLSCert), cfg.Path(r.TLSKey))
			if err != nil {
				return nil, fmt.Errorf("listen.reverse.tls_cert: %w", err)
			}
			st.reverseCert = &cert
		}
		st.reverse, st.reverseTarget = u, newTarget(hp, scheme)
		st.reverseTarget.reverse = true
	}
	return st, nil
}

func newUpstream(cfg *config.Config, extraCA string, route dialer.Route, connectTo string, d *dialer.Dialer) (*upstream, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		return nil, fmt.Errorf("system roots: %w", err)
	}
	if extraCA != "" {
		pem, err := config.ReadFile(cfg.Path(extraCA))
		if err != nil {
			return nil, err
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", extraCA)
		}
	}
	u := &upstream{route: route}
	if connectTo != "" {
		hp, err := hostport.Parse(connectTo, 0)
		if err != nil {
			return nil, err
		}
		u.route.ConnectTo = &hp
	}
	t := cfg.Timeouts
	u.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			hp, err := hostport.Parse(addr, 0)
			if err != nil {
				return nil, err
			}
			return d.Dial(ctx, hp, u.route)
		},
		// The name verified is the request's host, never the connect_to address.
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   t.TLSHandshake.D(),
		ResponseHeaderTimeout: t.ResponseHeader.D(),
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		// Pass the client's Accept-Encoding and the upstream's encoding through untouched.
		DisableCompression: true,
	}
	return u, nil
}

// close releases the idle upstream connections of a replaced state; requests
// in flight keep theirs until they finish.
func (st *state) close() {
	for _, u := range st.upstreams {
		u.transport.CloseIdleConnections()
	}
	if st.reverse != nil {
		st.reverse.transport.CloseIdleConnections()
	}
}
