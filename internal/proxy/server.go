// Package proxy holds sluice's listeners and what only they know: the
// forward proxy (CONNECT and absolute-URI HTTP), the optional HTTPS-proxy
// listener, the reverse-proxy listener, target identification for each,
// the CONNECT stage (tunnel or intercept), and the forwarder that sends a
// request to its upstream.
//
// Every request, including each one inside an intercepted CONNECT, is
// served by the one pipeline handed to New (internal/route), so the policy
// is checked per request against the config of that moment.
//
// Metrics: sluice_proxy_sessions{kind} (open tunnels and intercepted
// connections), sluice_proxy_upstream_errors_total{kind},
// sluice_proxy_client_handshake_errors_total.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"sluice/internal/bodymem"
	"sluice/internal/ca"
	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/hostport"
	"sluice/internal/obs"
)

// Options are what New needs.
type Options struct {
	// Config is the startup config: listener addresses, server timeouts and
	// the HTTPS-proxy listener's names, which keep their values until a restart.
	Config *config.Config
	// Pipeline serves every request of every listener. Required.
	Pipeline http.Handler
	// Authority mints the leaves of intercepted hosts. Required.
	Authority *ca.Authority
	// Root signs the HTTPS-proxy listener's own certificate.
	Root *ca.Root
	// Reverse returns the reverse listener's current settings (nil: none).
	Reverse func() *Backend
	// ClientCertificates reports whether a client in the config in force
	// may prove who it is with a certificate; the HTTPS-proxy and
	// transparent TLS handshakes ask for one only then. Nil: always ask.
	ClientCertificates func() bool
	// Live returns the config in force, for what a reload changes in the
	// listeners (limits.connections_per_client, timeouts.tls_handshake).
	// Nil: Config.
	Live func() *config.Config
	Log  *slog.Logger
	// Registerer receives the metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Now is the clock for certificates; nil is time.Now.
	Now func() time.Time
}

// Server runs the listeners. Its pipeline decides; it listens, takes
// CONNECTs over and forwards.
type Server struct {
	log       *slog.Logger
	authority *ca.Authority
	reverse   func() *Backend
	cfg       *config.Config // the startup config: what the listeners were built from
	// live returns the config in force.
	live func() *config.Config
	// askCerts: whether handshakes ask for a client certificate now.
	askCerts func() bool

	pipeline http.Handler
	forward  *http.Server // the proxy listeners' server
	rev      *http.Server // the reverse-proxy listener's server
	plain    *http.Server // the transparent HTTP listener's server
	mitm     *http.Server // serves requests inside intercepted CONNECTs
	mitmLn   *connListener
	mitmTLS  *tls.Config
	// mitmClientAuth is mitmTLS asking for a client certificate (transparent connections).
	mitmClientAuth *tls.Config
	selfCert       *selfCert

	mu       sync.Mutex
	hijacked map[net.Conn]struct{} // tunnels and intercepted client conns, closed at shutdown

	metrics *proxyMetrics
	bodies  *bodymem.Pool
	conns   *clientConns
}

var _ http.Handler = (*Forwarder)(nil)

// New builds a Server. It starts nothing.
func New(opts Options) (*Server, error) {
	if opts.Pipeline == nil || opts.Authority == nil {
		return nil, errors.New("proxy: Options.Pipeline and Options.Authority are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Reverse == nil {
		opts.Reverse = func() *Backend { return nil }
	}
	if opts.ClientCertificates == nil {
		opts.ClientCertificates = func() bool { return true }
	}
	if opts.Live == nil {
		opts.Live = func() *config.Config { return opts.Config }
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log: opts.Log, authority: opts.Authority, reverse: opts.Reverse, cfg: opts.Config, metrics: m, pipeline: opts.Pipeline, askCerts: opts.ClientCertificates,
		mitmLn: newConnListener(), hijacked: map[net.Conn]struct{}{},
		bodies: bodymem.NewPool(m.bodyBytes, m.bodiesOverMemory),
		conns:  newClientConns(func() int { return *opts.Live().Limits.ConnectionsPerClient }, opts.Config.Bans.IPv6Prefix, m.connsRefused),
		live:   opts.Live,
	}
	s.selfCert = &selfCert{root: opts.Root, names: selfNames(opts.Config.Listen.ProxyTLS), now: opts.Now, validity: opts.Config.CA.LeafValidity.D()}
	s.mitmTLS = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: s.mitmCertificate,
	}
	s.mitmClientAuth = s.mitmTLS.Clone()
	s.mitmClientAuth.ClientAuth, s.mitmClientAuth.ClientCAs = tls.VerifyClientCertIfGiven, rootPool(opts.Root)
	s.mitmTLS.GetConfigForClient = s.mitmConfigFor
	conns, err := obs.NewConns(opts.Log, opts.Registerer)
	if err != nil {
		return nil, err
	}
	t := opts.Config.Timeouts
	errLog := slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug)
	// http2: the server may speak HTTP/2, whose stream resets each
	// connection accounts for; the proxy and plain listeners speak
	// HTTP/1.1 only (no ALPN h2, no h2c) and need no account.
	server := func(http2 bool) *http.Server {
		srv := &http.Server{
			Handler:           opts.Pipeline,
			ReadHeaderTimeout: t.RequestHeader.D(),
			IdleTimeout:       t.ClientIdle.D(),
			ErrorLog:          errLog,
			// Each stream in flight may hold an upstream request: the
			// bound on what one client connection costs (RFC 9113 asks for
			// at least 100; Go's default is 250).
			HTTP2: &http.HTTP2Config{MaxConcurrentStreams: maxClientStreams},
		}
		if http2 {
			srv.ConnContext, srv.ConnState = conns.ConnContext, conns.ConnState
		}
		return srv
	}
	s.forward, s.rev, s.mitm, s.plain = server(false), server(true), server(true), server(false)
	s.mitm.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return conns.ConnContext(sessionContext(ctx, c), c)
	}
	return s, nil
}

const maxClientStreams = 100

// TransparentListener is a transparent TLS listener and the port its
// clients believe they connect to: its own, where DNS sends them (443;
// 9443 for Binance's streams).
type TransparentListener struct {
	net.Listener
	Port uint16
}

// Listeners are the sockets Serve serves; nil ones are off.
type Listeners struct {
	Proxy           net.Listener
	ProxyTLS        net.Listener // the HTTPS-proxy listener
	Reverse         net.Listener
	TransparentTLS  []TransparentListener
	TransparentHTTP net.Listener
}

// Serve runs the listeners until ctx ends, then shuts down gracefully
// within timeouts.shutdown: listeners close at once, in-flight requests
// finish, then tunnels and intercepted connections still open are closed.
func (s *Server) Serve(ctx context.Context, lns Listeners) error {
	g, gctx := errgroup.WithContext(ctx)
	// Requests outlive ctx by the shutdown grace; each server marks its
	// requests with the entry point they came in by.
	shutdown := obs.NewShutdown()
	base := obs.WithShutdown(context.WithoutCancel(ctx), shutdown)
	for srv, entry := range map[*http.Server]decision.Entry{s.forward: decision.EntryForward, s.rev: decision.EntryReverse,
		s.mitm: decision.EntryIntercept, s.plain: decision.EntryTransparentHTTP} {
		ectx := decision.WithEntry(base, entry)
		srv.BaseContext = func(net.Listener) context.Context { return ectx }
	}
	serve := func(srv *http.Server, l net.Listener) {
		g.Go(func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if lns.Proxy != nil {
		serve(s.forward, s.conns.listener(lns.Proxy, "proxy", true, nil))
	}
	if ln := lns.Reverse; ln != nil {
		// The peers a reverse listener trusts (a load balancer) carry many clients.
		ln = s.conns.listener(ln, "reverse", false, func(a netip.Addr) bool { b := s.reverse(); return b != nil && b.trusts(a) })
		if r := s.cfg.Listen.Reverse; r != nil && r.ProxyProtocol {
			ln = &proxyproto.Listener{Listener: ln, ConnPolicy: s.proxyProtocolPolicy, ReadHeaderTimeout: 5 * time.Second}
		}
		if b := s.reverse(); b != nil && b.Cert != nil {
			ln = tls.NewListener(ln, &tls.Config{
				MinVersion: tls.VersionTLS12,
				NextProtos: []string{"h2", "http/1.1"},
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
					if b := s.reverse(); b != nil && b.Cert != nil {
						return b.Cert, nil
					}
					return nil, errors.New("listen.reverse has no certificate any more")
				},
			})
		}
		serve(s.rev, ln)
	}
	if lns.ProxyTLS != nil {
		plain := &tls.Config{
			MinVersion: tls.VersionTLS12,
			// http/1.1 only: CONNECT over HTTP/2 cannot be hijacked
			NextProtos:     []string{"http/1.1"},
			GetCertificate: s.selfCert.get,
		}
		// A client certificate from sluice's CA names a client (clients.NAME.certificate).
		withCerts := plain.Clone()
		withCerts.ClientAuth, withCerts.ClientCAs = tls.VerifyClientCertIfGiven, rootPool(s.selfCert.root)
		serve(s.forward, tls.NewListener(s.conns.listener(lns.ProxyTLS, "proxy_tls", false, nil), &tls.Config{
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				if s.askCerts() {
					return withCerts, nil
				}
				return plain, nil
			},
		}))
	}
	if lns.TransparentHTTP != nil {
		serve(s.plain, s.conns.listener(lns.TransparentHTTP, "transparent_http", true, nil))
	}
	for _, ln := range lns.TransparentTLS {
		g.Go(func() error {
			return s.serveTransparentTLS(s.conns.listener(ln.Listener, "transparent_tls", false, nil), strconv.Itoa(int(ln.Port)), base)
		})
	}
	serve(s.mitm, s.mitmLn)
	g.Go(func() error {
		<-gctx.Done()
		for _, ln := range lns.TransparentTLS {
			ln.Close()
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), s.cfg.Timeouts.Shutdown.D())
		defer cancel()
		var wg sync.WaitGroup
		for _, srv := range []*http.Server{s.forward, s.rev, s.mitm, s.plain} {
			wg.Go(func() {
				if err := srv.Shutdown(sctx); err != nil {
					shutdown.CutOff()
					srv.Close()
				}
			})
		}
		wg.Wait()
		shutdown.CutOff() // tunnels and intercepted connections still open
		s.closeHijacked()
		shutdown.Wait(time.Second) // the lines of what was cut off
		return nil
	})
	return g.Wait()
}

// proxyProtocolPolicy requires a PROXY protocol header from the trusted
// proxies, and reads none from anyone else: only they may name the client.
func (s *Server) proxyProtocolPolicy(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
	if b := s.reverse(); b != nil {
		if peer, ok := addrOf(o.Upstream.String()); ok && b.trusts(peer) {
			return proxyproto.REQUIRE, nil
		}
	}
	return proxyproto.SKIP, nil
}

// track registers a hijacked connection so that shutdown can close it; the
// returned func unregisters it.
func (s *Server) track(c net.Conn) func() {
	s.mu.Lock()
	s.hijacked[c] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.hijacked, c)
		s.mu.Unlock()
	}
}

func (s *Server) closeHijacked() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.hijacked {
		c.Close()
	}
}

// selfNames are the names the HTTPS-proxy listener's certificate covers.
func selfNames(listen string) []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	if ap, err := netip.ParseAddrPort(listen); err == nil && !ap.Addr().IsUnspecified() && !slices.Contains(names, ap.Addr().String()) {
		names = append(names, ap.Addr().String())
	}
	if h, err := os.Hostname(); err == nil {
		if n, err := hostport.NormalizeHost(h); err == nil && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// rootPool holds sluice's CA alone: the issuer of client certificates.
func rootPool(root *ca.Root) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(root.Cert)
	return p
}
