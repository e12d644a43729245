// Package proxy is sluice's forward proxy: CONNECT (tunnel or intercept),
// absolute-URI plain HTTP, and the optional HTTPS-proxy listener.
//
// Every request, including each one inside an intercepted CONNECT, runs
// through the same handler chain, so the policy is checked per request
// against the config of that moment.
//
// Metrics: sluice_proxy_sessions{kind} (open tunnels and intercepted
// connections), sluice_proxy_upstream_errors_total{kind},
// sluice_proxy_client_handshake_errors_total.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"sluice/internal/blobs"
	"sluice/internal/ca"
	"sluice/internal/cache"
	"sluice/internal/config"
	"sluice/internal/dialer"
	"sluice/internal/filter"
	"sluice/internal/hostport"
	"sluice/internal/obs"
	"sluice/internal/throttle"
)

// Options are what New needs.
type Options struct {
	Config *config.Config
	Root   *ca.Root
	// Resolver resolves upstream names; nil is the system resolver.
	Resolver dialer.Resolver
	Log      *slog.Logger
	// Registerer receives the metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Now is the clock for certificates; nil is time.Now.
	Now func() time.Time
	// Blobs is the store of immutable files; nil turns it off.
	Blobs *blobs.Store
	// Bans is the client ban list; nil: violations are refused, never banned.
	Bans *filter.Bans
}

// Server is the forward proxy. Reload swaps its config while it runs.
type Server struct {
	log       *slog.Logger
	authority *ca.Authority
	resolver  dialer.Resolver
	now       func() time.Time
	state     atomic.Pointer[state]

	forward   *http.Server // the proxy listeners' server
	reverse   *http.Server // the reverse-proxy listener's server
	cache     *cache.Cache
	limiter   *throttle.Limiter
	blobs     *blobs.Store
	bans      *filter.Bans
	mitm      *http.Server // serves requests inside intercepted CONNECTs
	inner     http.Handler // policy, cache, forwarding; shared by both servers
	forwarder http.Handler
	mitmLn    *connListener
	mitmTLS   *tls.Config
	selfCert  *selfCert

	mu       sync.Mutex
	hijacked map[net.Conn]struct{} // tunnels and intercepted client conns, closed at shutdown

	metrics *proxyMetrics
}

// New builds a Server from a validated config. It starts nothing.
func New(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log: opts.Log, resolver: opts.Resolver, now: opts.Now, metrics: m, blobs: opts.Blobs, bans: opts.Bans,
		mitmLn: newConnListener(), hijacked: map[net.Conn]struct{}{},
	}
	st, err := s.newState(opts.Config)
	if err != nil {
		return nil, err
	}
	s.state.Store(st)
	s.authority, err = ca.New(opts.Root, ca.Options{
		Allow:        s.allowLeaf,
		LeafValidity: opts.Config.CA.LeafValidity.D(),
		CacheSize:    opts.Config.CA.LeafCacheSize,
		Now:          opts.Now,
		Registerer:   opts.Registerer,
	})
	if err != nil {
		return nil, err
	}
	s.selfCert = &selfCert{root: opts.Root, names: selfNames(opts.Config.Listen.ProxyTLS), now: opts.Now, validity: opts.Config.CA.LeafValidity.D()}
	s.mitmTLS = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: s.mitmCertificate,
	}

	obsMetrics, err := obs.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	cc := opts.Config.Cache
	s.cache, err = cache.New(cache.Options{MaxBytes: int64(cc.MaxBytes), MaxObjectBytes: int64(cc.MaxObjectBytes),
		FetchTimeout: cc.FetchTimeout.D(), Now: opts.Now, Log: opts.Log.With("component", "cache"), Registerer: opts.Registerer})
	if err != nil {
		return nil, err
	}
	queries := func() bool { return s.state.Load().cfg.Log.Queries }
	errLog := slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug)
	s.limiter, err = throttle.New(opts.Log.With("component", "throttle"), opts.Now, opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.forwarder = s.newForwarder()
	inner := http.HandlerFunc(s.serveTarget)
	t := opts.Config.Timeouts
	s.forward = &http.Server{
		Handler: Chain(http.HandlerFunc(s.dispatch),
			obs.AccessLog(opts.Log, obsMetrics, obs.LogOptions{Mode: "forward", Queries: queries}),
			obs.Recover(opts.Log)),
		ReadHeaderTimeout: t.TLSHandshake.D(),
		IdleTimeout:       t.ClientIdle.D(),
		ErrorLog:          errLog,
	}
	s.reverse = &http.Server{
		Handler: Chain(http.HandlerFunc(s.serveReverse),
			s.realClient, // before the access log, which records the client it names
			obs.AccessLog(opts.Log, obsMetrics, obs.LogOptions{Mode: "reverse", Queries: queries}),
			obs.Recover(opts.Log)),
		ReadHeaderTimeout: t.TLSHandshake.D(),
		IdleTimeout:       t.ClientIdle.D(),
		ErrorLog:          errLog,
	}
	s.mitm = &http.Server{
		Handler: Chain(inner,
			obs.AccessLog(opts.Log, obsMetrics, obs.LogOptions{Mode: "mitm", Queries: queries}),
			obs.Recover(opts.Log),
			s.checkHost),
		ReadHeaderTimeout: t.TLSHandshake.D(),
		IdleTimeout:       t.ClientIdle.D(),
		ErrorLog:          errLog,
		ConnContext:       sessionContext,
	}
	s.inner = inner
	return s, nil
}

// Chain returns mw[0](mw[1](...(h))): the first middleware sees the request first.
func Chain(h http.Handler, mw ...func(http.Handler) http.Handler) http.Handler {
	for _, m := range slices.Backward(mw) {
		h = m(h)
	}
	return h
}

// Reload swaps in a new validated config. Listener addresses and server
// timeouts keep the values they started with.
func (s *Server) Reload(cfg *config.Config) error {
	st, err := s.newState(cfg)
	if err != nil {
		return err
	}
	old := s.state.Swap(st)
	old.close()
	return nil
}

// allowLeaf is the CA's veto: leaves only for hosts intercepted right now.
func (s *Server) allowLeaf(host string) error {
	e := s.state.Load().policy.Lookup(host)
	if e == nil || e.Host.Mode != config.ModeIntercept {
		return errors.New("host is not intercepted by the current config")
	}
	return nil
}

// Listeners are the sockets Serve serves; nil ones are off.
type Listeners struct {
	Proxy    net.Listener
	ProxyTLS net.Listener // the HTTPS-proxy listener
	Reverse  net.Listener
}

// Serve runs the listeners until ctx ends, then shuts down gracefully
// within timeouts.shutdown: listeners close at once, in-flight requests
// finish, then tunnels and intercepted connections still open are closed.
func (s *Server) Serve(ctx context.Context, lns Listeners) error {
	g, gctx := errgroup.WithContext(ctx)
	serve := func(srv *http.Server, l net.Listener) {
		g.Go(func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if lns.Proxy != nil {
		serve(s.forward, lns.Proxy)
	}
	if ln := lns.Reverse; ln != nil {
		st := s.state.Load()
		if r := st.cfg.Listen.Reverse; r != nil && r.ProxyProtocol {
			ln = newProxyProtoListener(ln, func() trusted { return s.state.Load().reverseTrusted })
		}
		if st.reverseCert != nil {
			ln = tls.NewListener(ln, &tls.Config{
				MinVersion: tls.VersionTLS12,
				NextProtos: []string{"h2", "http/1.1"},
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
					if c := s.state.Load().reverseCert; c != nil {
						return c, nil
					}
					return nil, errors.New("listen.reverse has no certificate any more")
				},
			})
		}
		serve(s.reverse, ln)
	}
	if lns.ProxyTLS != nil {
		serve(s.forward, tls.NewListener(lns.ProxyTLS, &tls.Config{
			MinVersion: tls.VersionTLS12,
			// http/1.1 only: CONNECT over HTTP/2 cannot be hijacked
			NextProtos:     []string{"http/1.1"},
			GetCertificate: s.selfCert.get,
		}))
	}
	serve(s.mitm, s.mitmLn)
	g.Go(func() error {
		<-gctx.Done()
		grace := s.state.Load().cfg.Timeouts.Shutdown.D()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), grace)
		defer cancel()
		var wg sync.WaitGroup
		for _, srv := range []*http.Server{s.forward, s.reverse, s.mitm} {
			wg.Go(func() {
				if err := srv.Shutdown(sctx); err != nil {
					srv.Close()
				}
			})
		}
		wg.Wait()
		s.closeHijacked()
		s.state.Load().close()
		return nil
	})
	return g.Wait()
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

// dispatch routes a forward-listener request: CONNECT, or an absolute URI.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		s.handleConnect(w, r)
		return
	}
	if !r.URL.IsAbs() || r.URL.Host == "" {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "not a proxy request",
			Detail: fmt.Sprintf("sluice is a forward proxy: send CONNECT host:443 or an absolute URI (GET http://host/path), not %q", r.URL.Path)})
		return
	}
	s.serveAbsolute(w, r)
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
