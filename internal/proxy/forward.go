package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"sluice/internal/config"
	"sluice/internal/dialer"
	"sluice/internal/filter"
	"sluice/internal/hostport"
	"sluice/internal/obs"
	"sluice/internal/policy"
	"sluice/internal/throttle"
)

// serveAbsolute handles "GET http://host/path" on the forward listener.
func (s *Server) serveAbsolute(w http.ResponseWriter, r *http.Request) {
	scheme, port := policy.HTTP, uint16(80)
	switch r.URL.Scheme {
	case "http":
	case "https": // the client asks sluice to make the TLS connection
		scheme, port = policy.HTTPS, 443
	default:
		obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "unsupported scheme", Host: r.URL.Host,
			Detail: fmt.Sprintf("scheme %q: sluice forwards http and https", r.URL.Scheme)})
		return
	}
	hp, err := hostport.Parse(r.URL.Host, port)
	if err != nil {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "bad host", Host: r.URL.Host, Detail: err.Error()})
		return
	}
	ctx := context.WithValue(r.Context(), targetKey{}, newTarget(hp, scheme))
	s.inner.ServeHTTP(w, r.WithContext(ctx))
}

// checkHost refuses a request inside an intercepted CONNECT whose Host (or
// :authority) is not the CONNECT target: an allowed tunnel must not carry
// requests for another host.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, _ := targetFrom(r.Context())
		if r.Host == t.authority || r.Host == t.key {
			next.ServeHTTP(w, r) // the common case, without parsing
			return
		}
		if hp, err := hostport.Parse(r.Host, t.hp.Port); err != nil || hp != t.hp {
			rec := obs.RecordFrom(r.Context())
			rec.Decision, rec.Host = "deny", t.hp.String()
			obs.WriteError(w, r, &obs.Error{Status: http.StatusMisdirectedRequest, Msg: "host does not match the CONNECT target", Host: r.Host,
				Detail:      fmt.Sprintf("this connection was opened with CONNECT %s; a request for %q needs its own CONNECT", t.hp, r.Host),
				ProxyStatus: "http_request_denied"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

type routeKey struct{}

// route is where the forwarder sends a request: its target and upstream.
type route struct {
	target   *target
	upstream *upstream
}

// serveTarget runs the stages after the listener: the policy decides the
// request's target against the current config (the cheapest refusal
// comes first), then the cache answers, coalesces or fills, and only then
// does anything go upstream.
func (s *Server) serveTarget(w http.ResponseWriter, r *http.Request) {
	t, ok := targetFrom(r.Context())
	if !ok {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusInternalServerError, Msg: "internal error", Err: errors.New("request without target")})
		return
	}
	rec := obs.RecordFrom(r.Context())
	rec.Host = t.key
	st := s.state.Load()
	d := st.policy.Decide(t.hp, t.scheme)
	record(rec, d)
	if d.Action == policy.Tunnel && t.scheme == policy.HTTPS {
		// Reading the request would be interception, which the entry forbids.
		d.Action, d.Reason = policy.Deny, "host is tunneled, not intercepted"
		d.Fix = "use CONNECT, or set " + config.KeyPath("hosts", d.Entry.Key, "mode") + " to intercept"
		rec.Decision, rec.Reason = "deny", d.Reason
	}
	if d.Action == policy.Deny {
		writeDenied(w, r, d)
		return
	}
	rt := &route{target: t, upstream: st.upstreams[d.Entry.Pattern]}
	if s.admit(w, r, rt) {
		s.serveRoute(w, r, rt)
	}
}

// admit refuses a banned client, and a request that breaks its route's
// rules, before anything is forwarded. It reports whether r may go on.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, rt *route) bool {
	if s.refuseBanned(w, r) {
		return false
	}
	rules := rt.upstream.rules
	if rules == nil {
		return true
	}
	v := rules.CheckHead(r)
	if v == nil {
		var err error
		if v, err = rules.CheckBody(r); err != nil {
			obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "cannot read the request body", Host: rt.target.key, Err: err})
			return false
		}
	}
	if v != nil {
		s.refuseViolation(w, r, rules, v, rt.target.key)
		return false
	}
	return true
}

// refuseBanned answers 403 to a banned client; its body is never read.
func (s *Server) refuseBanned(w http.ResponseWriter, r *http.Request) bool {
	if s.bans == nil {
		return false
	}
	b, banned := s.bans.Banned(clientIP(r))
	if !banned {
		return false
	}
	rec := obs.RecordFrom(r.Context())
	rec.Decision = "deny"
	w.Header().Set("Retry-After", strconv.Itoa(int(time.Until(b.Until).Seconds())+1))
	w.Header().Set("Connection", "close") // do not read what the client sends next
	obs.WriteError(w, r, &obs.Error{Status: http.StatusForbidden, Msg: "client banned",
		Detail:      fmt.Sprintf("%s is banned until %s (%s)", b.Client, b.Until.UTC().Format(time.RFC3339), b.Reason),
		ProxyStatus: "http_request_denied"})
	return true
}

// refuseViolation answers a broken rule, counts it toward a ban, and logs
// one stable line per violation (for fail2ban and friends).
func (s *Server) refuseViolation(w http.ResponseWriter, r *http.Request, rules *filter.Rules, v *filter.Violation, host string) {
	client := clientIP(r)
	banned := s.bans != nil && s.bans.Strike(client, rules, v)
	s.log.Warn("rule_violation", "client_ip", client, "rule", rules.Name, "check", v.Check, "method", r.Method,
		"host", host, "path", r.URL.Path, "banned", banned)
	rec := obs.RecordFrom(r.Context())
	rec.Decision, rec.Reason = "deny", "rule_violation: "+v.Check
	if rules.Answer == "eosio" {
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

func clientIP(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// serveRoute answers immutable files from the blob store and the rest from
// the response cache, or forwards to the route's upstream.
func (s *Server) serveRoute(w http.ResponseWriter, r *http.Request, rt *route) {
	if s.blobs != nil && rt.upstream.blobs.Match(r) {
		s.blobs.Handle(w, r, rt.target.key, rt.upstream.blobs, forwardTo{s, rt})
		return
	}
	s.cache.Handle(w, r, rt.target.key, rt.upstream.cache, forwardTo{s, rt})
}

// forwardTo is the last stage before the upstream: it waits for budget
// (cache hits never get here, so they never spend any), then hands the
// request to the forwarder with its route.
type forwardTo struct {
	s  *Server
	rt *route
}

func (f forwardTo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if spec := f.rt.upstream.throttle.Pick(r); spec != nil {
		lease, err := f.s.limiter.Acquire(r.Context(), spec, f.rt.target.hp.Host, r)
		if err != nil {
			rec := obs.RecordFrom(r.Context())
			if r.Context().Err() != nil {
				rec.Status, rec.Reason, rec.Err = 499, "client left while waiting for upstream budget", err
				return
			}
			retry := f.s.limiter.RetryAfter(spec, f.rt.target.hp.Host, r)
			w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
			obs.WriteError(w, r, &obs.Error{Status: http.StatusTooManyRequests, Msg: "upstream budget exhausted", Host: f.rt.target.key,
				Detail:      fmt.Sprintf("no budget left on %s within max_wait; sluice sent nothing upstream; retry in %s", f.rt.target.hp.Host, retry.Round(time.Millisecond)),
				ProxyStatus: "connection_limit_reached"})
			return
		}
		defer lease.Release()
		w.Header().Set("X-Sluice-Wait", strconv.FormatFloat(lease.Waited.Seconds(), 'f', 3, 64))
		r = r.WithContext(context.WithValue(r.Context(), leaseKey{}, lease))
	}
	f.s.forwarder.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), routeKey{}, f.rt)))
}

type leaseKey struct{}

// serveReverse sends every request of the reverse listener to its backend.
func (s *Server) serveReverse(w http.ResponseWriter, r *http.Request) {
	st := s.state.Load()
	if st.reverse == nil {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusServiceUnavailable, Msg: "no backend",
			Detail: "listen.reverse was removed from the config; restart sluice to close this listener"})
		return
	}
	rec := obs.RecordFrom(r.Context())
	rec.Host, rec.Decision, rec.Rule = st.reverseTarget.key, "reverse", "listen.reverse"
	rt := &route{target: st.reverseTarget, upstream: st.reverse}
	if s.admit(w, r, rt) {
		s.serveRoute(w, r, rt)
	}
}

var bufferPool = &pool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type pool struct{ p sync.Pool }

func (p *pool) Get() []byte  { return *p.p.Get().(*[]byte) }
func (p *pool) Put(b []byte) { p.p.Put(&b) }

// newForwarder returns the reverse proxy that sends each request to its
// route's upstream. httputil.ReverseProxy removes the hop-by-hop headers
// (RFC 9110 section 7.6.1), streams bodies both ways and handles upgrades.
func (s *Server) newForwarder() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			rt := pr.In.Context().Value(routeKey{}).(*route)
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", rt.target.authority
			if rt.target.scheme == policy.HTTP {
				pr.Out.URL.Scheme = "http"
			}
			pr.Out.Host = "" // the Host header follows the URL: the target, never the client's claim
			if rt.target.reverse {
				pr.SetXForwarded() // a backend wants to know its real client
			}
		},
		Transport: roundTripper(s.roundTrip),
		ModifyResponse: func(resp *http.Response) error {
			if lease, ok := resp.Request.Context().Value(leaseKey{}).(*throttle.Lease); ok {
				lease.Observe(resp)
			}
			return nil
		},
		ErrorHandler: s.proxyError,
		BufferPool:   bufferPool,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (s *Server) roundTrip(r *http.Request) (*http.Response, error) {
	rt := r.Context().Value(routeKey{}).(*route)
	rec := obs.RecordFrom(r.Context())
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		rec.UpstreamAddr = info.Conn.RemoteAddr().String()
	}}
	return rt.upstream.transport.RoundTrip(r.WithContext(httptrace.WithClientTrace(r.Context(), trace)))
}

// proxyError answers a request whose upstream could not be reached.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rec := obs.RecordFrom(r.Context())
	if r.Context().Err() != nil {
		rec.Status, rec.Reason, rec.Err = 499, "client closed the request", err
		return
	}
	if rt, ok := r.Context().Value(routeKey{}).(*route); ok && filter.TooLarge(err) && rt.upstream.rules != nil {
		s.refuseViolation(w, r, rt.upstream.rules, &filter.Violation{Status: http.StatusRequestEntityTooLarge,
			Check: "body_bytes", Detail: "body longer than max_body_bytes (cut off while streaming)"}, rec.Host)
		return
	}
	s.writeUpstreamError(w, r, rec.Host, err)
}

// writeUpstreamError maps a dial, TLS or HTTP failure to 403, 502 or 504
// with a reason the client can act on.
func (s *Server) writeUpstreamError(w http.ResponseWriter, r *http.Request, host string, err error) {
	e := classify(err)
	e.Host = host
	s.metrics.upstreamErrors.WithLabelValues(e.ProxyStatus).Inc()
	obs.WriteError(w, r, e)
}

func classify(err error) *obs.Error {
	var (
		urlErr   *url.Error
		dnsErr   *net.DNSError
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		netErr   net.Error
		dialErr  *dialer.Error
	)
	if errors.As(err, &urlErr) { // its text repeats the URL, query and all
		err = urlErr.Err
	}
	e := &obs.Error{Status: http.StatusBadGateway, Err: err, Detail: err.Error()}
	switch {
	case errors.Is(err, dialer.ErrForbidden):
		e.Status, e.Msg, e.ProxyStatus = http.StatusForbidden, "upstream address not allowed", "destination_ip_prohibited"
		if errors.As(err, &dialErr) {
			e.Detail = fmt.Sprintf("%s resolves to %s, which sluice does not connect to (SSRF guard): %v; if this host is meant to be private, set allow_private: true in its hosts entry", dialErr.Host, dialErr.Addr, dialErr.Err)
		}
	case errors.As(err, &dnsErr):
		e.Msg, e.ProxyStatus = "upstream host not found", "dns_error"
		if dnsErr.IsTimeout {
			e.Status, e.ProxyStatus = http.StatusGatewayTimeout, "dns_timeout"
		}
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		e.Msg, e.ProxyStatus = "upstream certificate not trusted", "tls_certificate_error"
	case errors.Is(err, syscall.ECONNREFUSED):
		e.Msg, e.ProxyStatus = "upstream refused the connection", "connection_refused"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		e.Status, e.Msg, e.ProxyStatus = http.StatusGatewayTimeout, "upstream timed out", "connection_timeout"
		if errors.As(err, &dialErr) && dialErr.Op != "connect" {
			e.ProxyStatus = "dns_timeout"
		} else if !errors.As(err, &dialErr) {
			e.ProxyStatus = "http_response_timeout"
		}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		e.Msg, e.ProxyStatus = "upstream closed the connection", "connection_terminated"
	case isTLSError(err):
		e.Msg, e.ProxyStatus = "upstream TLS handshake failed", "tls_protocol_error"
	default:
		e.Msg, e.ProxyStatus = "upstream error", "destination_unavailable"
	}
	return e
}

func isTLSError(err error) bool {
	var alert tls.AlertError
	var rh tls.RecordHeaderError
	return errors.As(err, &alert) || errors.As(err, &rh)
}
