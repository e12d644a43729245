package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"sync"
	"syscall"
	"time"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/dialer"
	"sluice/internal/hostport"
	"sluice/internal/obs"
)

// Upstream is how sluice reaches the hosts of one route: its dialer route
// (SSRF guard, connect_to) and a pooled transport that verifies every
// certificate against the system roots plus the route's own, with HTTP/2
// when the upstream offers it. It is safe for concurrent use.
type Upstream struct {
	transport *http.Transport
}

// NewUpstream returns the upstream of a route. roots are the trusted
// roots; d dials, route says where and what the guard allows.
func NewUpstream(roots *x509.CertPool, d *dialer.Dialer, route dialer.Route, t config.Timeouts) *Upstream {
	return &Upstream{transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			hp, err := hostport.Parse(addr, 0)
			if err != nil {
				return nil, err
			}
			return d.Dial(ctx, hp, route)
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
	}}
}

// Client is an HTTP client over u's transport, for what is not forwarded
// request by request (the shared market streams' own connections).
func (u *Upstream) Client() *http.Client { return &http.Client{Transport: u.transport} }

// Close releases the idle connections of a replaced upstream; requests in
// flight keep theirs until they finish.
func (u *Upstream) Close() { u.transport.CloseIdleConnections() }

// Forwarder is the end of the pipeline: it sends a request to the upstream
// of its route, at the target its entry point fixed. httputil.ReverseProxy
// removes the hop-by-hop headers (RFC 9110 section 7.6.1), streams bodies
// both ways and handles upgrades.
type Forwarder struct {
	rp *httputil.ReverseProxy
	s  *Server
}

// Forwarder returns the pipeline's last handler; up returns a request's upstream.
// roundTripDetached sends a request without a body so that its client
// leaving midway does not cost the upstream connection: cancelling an
// HTTP/1.1 request in flight closes its connection, so a client resetting
// streams would make sluice dial once per stream. The request goes on for
// at most abandonGrace after its client left, and the rest of its answer
// (up to maxDrain bytes) is read off so the connection returns to the pool.
func roundTripDetached(rt http.RoundTripper, r *http.Request, trace *httptrace.ClientTrace) (*http.Response, error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stop := context.AfterFunc(r.Context(), func() {
		t := time.AfterFunc(abandonGrace, cancel)
		select { // a shutdown that cuts requests off cuts this one too
		case <-obs.CutOffDone(r.Context()):
			t.Stop()
			cancel()
		case <-ctx.Done():
		}
	})
	resp, err := rt.RoundTrip(r.WithContext(httptrace.WithClientTrace(ctx, trace)))
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	resp.Body = &drainingBody{ReadCloser: resp.Body, done: func() { stop(); cancel() }}
	return resp, nil
}

const (
	abandonGrace = 5 * time.Second
	maxDrain     = 256 << 10
)

// drainingBody reads what is left of an answer, up to maxDrain, before it
// closes it: an HTTP/1.1 connection whose answer was not read to the end
// cannot be reused.
type drainingBody struct {
	io.ReadCloser
	done func()
}

func (b *drainingBody) Close() error {
	io.CopyN(io.Discard, b.ReadCloser, maxDrain)
	err := b.ReadCloser.Close()
	b.done()
	return err
}

func (s *Server) Forwarder(up func(*http.Request) *Upstream) *Forwarder {
	f := &Forwarder{s: s}
	f.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			rec := decision.From(pr.In.Context())
			pr.Out.URL.Scheme, pr.Out.URL.Host = rec.Scheme.String(), rec.Target.Authority(rec.Scheme.DefaultPort())
			pr.Out.Host = "" // the Host header follows the URL: the target, never the client's claim
			pr.Out.Header.Add("Via", via(pr.In.ProtoMajor, pr.In.ProtoMinor))
			if rec.Entry == decision.EntryReverse {
				// A backend wants to know its real client: the one the entry
				// point named, never the hops a client claims.
				pr.SetXForwarded()
				pr.Out.Header.Set("X-Forwarded-For", rec.ClientIP)
			}
		},
		Transport: roundTripper(func(r *http.Request) (*http.Response, error) {
			rec := decision.From(r.Context())
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
				rec.UpstreamAddr = info.Conn.RemoteAddr().String()
			}}
			u := up(r)
			if u == nil {
				return nil, fmt.Errorf("no upstream for %s: the policy chose no route", rec.Target)
			}
			if err := r.Context().Err(); err != nil {
				return nil, err // the client left (an HTTP/2 reset): nothing to send, nothing to dial
			}
			if r.Body != nil && r.Body != http.NoBody || r.Header.Get("Upgrade") != "" {
				// A body cannot be sent twice, an upgraded connection is the
				// client's: both end with their client.
				return u.transport.RoundTrip(r.WithContext(httptrace.WithClientTrace(r.Context(), trace)))
			}
			return roundTripDetached(u.transport, r, trace)
		}),
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Add("Via", via(resp.ProtoMajor, resp.ProtoMinor))
			return nil
		},
		ErrorHandler: f.proxyError,
		BufferPool:   bufferPool,
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return f
}

func (f *Forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil && r.Body != http.NoBody {
		cb := &clientBody{ReadCloser: r.Body}
		r.Body = cb
		// The error handler sees the outgoing request, whose body wraps
		// this one: the context carries it there.
		r = r.WithContext(context.WithValue(r.Context(), clientBodyKey{}, cb))
	}
	f.rp.ServeHTTP(w, r)
}

type clientBodyKey struct{}

// clientBody remembers why reading the client's body failed, so that a
// malformed body (bad chunking, a short Content-Length) is answered as the
// client's fault, not blamed on the upstream.
type clientBody struct {
	io.ReadCloser
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

var bufferPool = &pool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type pool struct{ p sync.Pool }

func (p *pool) Get() []byte  { return *p.p.Get().(*[]byte) }
func (p *pool) Put(b []byte) { p.p.Put(&b) }

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// answeringError is an upstream error that a stage before the forwarder
// answers itself (a request body the rule stage cut off).
type answeringError interface {
	error
	Answer(http.ResponseWriter, *http.Request)
}

// proxyError answers a request whose upstream could not be reached, or
// whose body could not be read on the way there.
func (f *Forwarder) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	var ae answeringError
	if cb, _ := r.Context().Value(clientBodyKey{}).(*clientBody); bodyTimedOut(r) || errors.As(err, &ae) || r.Context().Err() != nil || cb != nil && cb.err != nil {
		// The server cancels the request when its body read fails; the
		// client may still be there to be told why.
		if cb != nil && cb.err != nil {
			err = cb.err
		}
		answerBodyError(w, r, err)
		return
	}
	f.s.writeUpstreamError(w, r, decision.From(r.Context()).Target.String(), err)
}

// writeUpstreamError maps a dial, TLS or HTTP failure to 403, 502 or 504
// with a reason the client can act on.
func (s *Server) writeUpstreamError(w http.ResponseWriter, r *http.Request, host string, err error) {
	e := classify(err)
	e.Host = host
	// The entry's own key, for the two failures a setting of it fixes.
	if rule := decision.From(r.Context()).Rule; rule != "" {
		switch e.ProxyStatus {
		case psIPProhibited:
			e.Hint = "set " + config.KeyPath("hosts", rule, "allow_private") + ": true if this upstream is meant to be private"
			e.Detail += " (" + e.Hint + ")"
		case psTLSCertificate:
			e.Hint = "if the upstream's certificate comes from a private CA, give that CA in " + config.KeyPath("hosts", rule, "upstream_ca")
			e.Detail += "; " + e.Hint
		}
	}
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
		e.Status, e.Msg, e.ProxyStatus = http.StatusForbidden, "upstream address not allowed", psIPProhibited
		if errors.As(err, &dialErr) {
			e.Detail = fmt.Sprintf("%s resolves to %s, which sluice does not connect to (SSRF guard): %v", dialErr.Host, dialErr.Addr, dialErr.Err)
		}
	case errors.As(err, &dnsErr):
		e.Msg, e.ProxyStatus = "upstream host not found", psDNSError
		if dnsErr.IsTimeout {
			e.Status, e.ProxyStatus = http.StatusGatewayTimeout, psDNSTimeout
		}
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		e.Msg, e.ProxyStatus = "upstream certificate not trusted", psTLSCertificate
	case errors.Is(err, syscall.ECONNREFUSED):
		e.Msg, e.ProxyStatus = "upstream refused the connection", psConnRefused
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		e.Status, e.Msg, e.ProxyStatus = http.StatusGatewayTimeout, "upstream timed out", psConnTimeout
		if errors.As(err, &dialErr) && dialErr.Op != "connect" {
			e.ProxyStatus = psDNSTimeout
		} else if !errors.As(err, &dialErr) {
			e.ProxyStatus = psResponseTimeout
		}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		e.Msg, e.ProxyStatus = "upstream closed the connection", psConnTerminated
	case isTLSError(err):
		e.Msg, e.ProxyStatus = "upstream TLS handshake failed", psTLSProtocol
	default:
		e.Msg, e.ProxyStatus = "upstream error", psUnavailable
	}
	return e
}

func isTLSError(err error) bool {
	var alert tls.AlertError
	var rh tls.RecordHeaderError
	return errors.As(err, &alert) || errors.As(err, &rh)
}
