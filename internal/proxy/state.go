package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"time"

	"sluice/internal/config"
	"sluice/internal/dialer"
	"sluice/internal/hostport"
	"sluice/internal/policy"
)

// state is everything that a config reload replaces at once.
type state struct {
	cfg       *config.Config
	policy    *policy.Policy
	upstreams map[string]*upstream // by policy.Entry.Pattern
}

// upstream is how sluice reaches the hosts of one entry: its own dialer
// route and a pooled, verifying transport (HTTP/2 when the upstream offers it).
type upstream struct {
	route     dialer.Route
	transport *http.Transport
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
		u, err := newUpstream(cfg, e, d)
		if err != nil {
			return nil, fmt.Errorf("hosts.%s: %w", e.Key, err)
		}
		st.upstreams[e.Pattern] = u
	}
	return st, nil
}

func newUpstream(cfg *config.Config, e *policy.Entry, d *dialer.Dialer) (*upstream, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		return nil, fmt.Errorf("system roots: %w", err)
	}
	if e.Host.UpstreamCA != "" {
		pem, err := config.ReadFile(cfg.Path(e.Host.UpstreamCA))
		if err != nil {
			return nil, err
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream_ca %s holds no PEM certificate", e.Host.UpstreamCA)
		}
	}
	u := &upstream{route: dialer.Route{AllowPrivate: e.Host.AllowPrivate}}
	if e.Host.ConnectTo != "" {
		hp, err := hostport.Parse(e.Host.ConnectTo, 0)
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
}
