package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"sluice/internal/ca"
	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/hostport"
	"sluice/internal/obs"
)

const connectEstablished = "HTTP/1.1 200 Connection established\r\n\r\n"

// Connect is the CONNECT stage: a CONNECT that the stages before it let
// through ends here, tunneled (spliced byte for byte to the upstream that
// up returns for it) or intercepted (its requests served by the pipeline
// again, one by one), within the config's timeouts t. Every other request
// goes on to next.
func (s *Server) Connect(up func(*http.Request) *Upstream, t config.Timeouts) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect {
				next.ServeHTTP(w, r)
				return
			}
			rec := decision.From(r.Context())
			u := up(r)
			switch {
			case rec.Action == decision.Tunnel && u != nil:
				s.tunnel(w, r, rec.Target, u, t.TunnelIdle.D())
			case rec.Action == decision.Intercept:
				s.intercept(w, r, rec.Target, t.TLSHandshake.D())
			default:
				obs.WriteError(w, r, &obs.Error{Status: http.StatusInternalServerError, Msg: "internal error",
					Err: fmt.Errorf("CONNECT reached the CONNECT stage with action %v", rec.Action)})
			}
		})
	}
}

// established answers a CONNECT's 200; a transparent connection gets
// nothing, its client believes it already talks to the host.
func established(c net.Conn, rec *decision.Record) error {
	if rec.Entry != decision.EntryConnect {
		return nil
	}
	_, err := io.WriteString(c, connectEstablished)
	return err
}

// hijack takes the client connection over from net/http. Bytes the client
// sent after the CONNECT head (an eager ClientHello) stay readable.
func hijack(w http.ResponseWriter) (net.Conn, error) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, err
	}
	if n := brw.Reader.Buffered(); n > 0 {
		return &bufferedConn{Conn: c, r: brw.Reader}, nil
	}
	return c, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tunnel dials the upstream first, so that a failure is still an HTTP
// answer, then splices the two connections byte for byte.
func (s *Server) tunnel(w http.ResponseWriter, r *http.Request, target hostport.HostPort, u *Upstream, idle time.Duration) {
	rec := decision.From(r.Context())
	up, err := u.transport.DialContext(r.Context(), "tcp", target.String())
	if err != nil {
		s.writeUpstreamError(w, r, target.String(), err)
		return
	}
	rec.UpstreamAddr = up.RemoteAddr().String()
	client, err := hijack(w)
	if err != nil {
		up.Close()
		obs.WriteError(w, r, &obs.Error{Status: http.StatusInternalServerError, Msg: "cannot take over the connection", Err: err})
		return
	}
	rec.Status = http.StatusOK
	if err := established(client, rec); err != nil {
		client.Close()
		up.Close()
		return
	}
	defer s.track(client)()
	defer s.track(up)()
	sessions := s.metrics.tunnels
	sessions.Inc()
	defer sessions.Dec()
	rec.BytesOut, rec.BytesIn = splice(client, up, idle)
}

// splice copies both ways until both sides are done or neither has sent
// anything for idle. It returns the bytes sent to a and to b.
func splice(a, b net.Conn, idle time.Duration) (toA, toB int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Go(func() { toB = copyIdle(b, a, idle, &last) })
	toA = copyIdle(a, b, idle, &last)
	wg.Wait()
	a.Close()
	b.Close()
	return toA, toB
}

// copyIdle copies src to dst. A read times out only when neither direction
// has moved a byte for idle (last is shared by both directions). At EOF it
// half-closes dst so the other side sees the end; on error it closes both.
func copyIdle(dst, src net.Conn, idle time.Duration, last *atomic.Int64) int64 {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		nr, rerr := src.Read(buf)
		if nr > 0 {
			last.Store(time.Now().UnixNano())
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				src.Close()
				dst.Close()
				return n
			}
		}
		if rerr == nil {
			continue
		}
		var ne net.Error
		if errors.As(rerr, &ne) && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
			continue // the other direction was busy: not idle
		}
		if rerr == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
				return n
			}
		}
		src.Close()
		dst.Close()
		return n
	}
}

// intercept answers 200, terminates the client's TLS with a leaf for the
// CONNECT target, and hands the connection to the inner HTTP server, which
// serves its requests (HTTP/1.1 or HTTP/2) through the handler chain.
func (s *Server) intercept(w http.ResponseWriter, r *http.Request, target hostport.HostPort, handshakeTimeout time.Duration) {
	rec := decision.From(r.Context())
	c, err := hijack(w)
	if err != nil {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusInternalServerError, Msg: "cannot take over the connection", Err: err})
		return
	}
	rec.Status = http.StatusOK
	if err := established(c, rec); err != nil {
		c.Close()
		return
	}
	untrack := s.track(c)
	sessions := s.metrics.intercepts
	sessions.Inc()
	sc := &sessionConn{Conn: c, target: target, client: rec.Client, transparent: rec.Entry == decision.EntryTransparentTLS,
		onClose: func() { untrack(); sessions.Dec() }}
	tc := tls.Server(sc, s.mitmTLS)
	// A deadline, not a context: no timer or watcher to make per
	// connection, and shutdown closes the connection anyway (track).
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		s.metrics.handshakeErrors.Inc()
		rec.Err = clientHandshakeError(err)
		rec.Reason = "client TLS handshake failed"
		tc.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if err := s.mitmLn.push(tc); err != nil {
		tc.Close()
	}
}

// clientHandshakeError explains the most common failure: a client that
// does not trust sluice's CA yet.
func clientHandshakeError(err error) error {
	if strings.Contains(err.Error(), "unknown certificate authority") || strings.Contains(err.Error(), "bad certificate") {
		return fmt.Errorf("%w (the client does not trust sluice's CA: run `eval \"$(sluice env)\"` or install ca.pem from the data dir)", err)
	}
	return err
}

// sessionConn is the client side of an intercepted CONNECT; it carries the
// CONNECT target to GetCertificate and to the inner server's requests.
type sessionConn struct {
	net.Conn
	target hostport.HostPort
	client string // the CONNECT's named client, "" without clients:
	// transparent: the client does not know it talks to a proxy, and may
	// prove who it is only with a certificate in this handshake.
	transparent bool
	onClose     func()
	once        sync.Once
}

func (c *sessionConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}

// mitmConfigFor asks a transparent connection's client for a certificate
// from sluice's CA, which may name it (clients.NAME.certificate), while
// some client may present one; a proxy's client proved who it is on its
// CONNECT.
func (s *Server) mitmConfigFor(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if sc, ok := hello.Conn.(*sessionConn); ok && sc.transparent && s.askCerts() {
		return s.mitmClientAuth, nil
	}
	return nil, nil
}

// mitmCertificate returns the leaf for the CONNECT target. The client's SNI
// must name the same host (or be absent, as for IP targets): the target
// comes from the CONNECT line, never from what the client says afterwards.
func (s *Server) mitmCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	sc, ok := hello.Conn.(*sessionConn)
	if !ok {
		return nil, errors.New("no CONNECT target for this connection")
	}
	if hello.ServerName != "" {
		sni, err := hostport.NormalizeHost(hello.ServerName)
		if err != nil || sni != sc.target.Host {
			return nil, fmt.Errorf("SNI %q does not match the CONNECT target %q", hello.ServerName, sc.target.Host)
		}
	}
	return s.authority.Leaf(sc.target.Host)
}

type sessionKey struct{}

// session is an intercepted connection's CONNECT target, as its requests
// must name it: key is "host:port", authority as a Host header writes it.
type session struct {
	target         hostport.HostPort
	key, authority string
	client         string
}

// sessionContext gives each intercepted connection's requests its target.
func sessionContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		if sc, ok := tc.NetConn().(*sessionConn); ok {
			t := sc.target
			return context.WithValue(ctx, sessionKey{}, &session{target: t, key: t.String(), authority: t.Authority(443), client: sc.client})
		}
	}
	return ctx
}

// connListener hands intercepted connections to the inner http.Server.
type connListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) error {
	select {
	case l.ch <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4zero} }

// selfCert is the HTTPS-proxy listener's own certificate, for the names a
// client may dial it by (its IP, localhost, the machine's host name) and no
// others; it is re-minted when a quarter of its validity is left.
type selfCert struct {
	root     *ca.Root
	names    []string
	now      func() time.Time
	validity time.Duration

	mu   sync.Mutex
	cert *tls.Certificate
}

func (c *selfCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && c.now().Before(c.cert.Leaf.NotAfter.Add(-c.validity/4)) {
		return c.cert, nil
	}
	cert, err := c.root.Sign(c.names, c.now(), c.validity)
	if err != nil {
		return nil, err
	}
	c.cert = cert
	return cert, nil
}
