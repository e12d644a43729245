package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"sluice/internal/decision"
)

// The transparent listeners serve clients that were never told about a
// proxy: DNS sent them to sluice, and they believe they talk to the host.
// A TLS connection becomes the CONNECT its ClientHello's SNI names (at
// the listener's port) and runs through the pipeline as one: the ban gate and the policy
// decide before anything is minted, a tunneled host is spliced with the
// ClientHello replayed to the upstream, an intercepted one terminated with
// its leaf. Plain requests are served by an http.Server whose requests are
// routed by Host (see Identify).

// serveTransparentTLS accepts connections on ln until it is closed.
func (s *Server) serveTransparentTLS(ln net.Listener, port string, base context.Context) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors, say: wait as net/http does, then go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("transparent TLS listener: accept failed; retrying", "error", err.Error(), "in", backoff.String())
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go s.transparentTLS(base, c, port)
	}
}

func (s *Server) transparentTLS(base context.Context, c net.Conn, port string) {
	untrack := s.track(c)
	defer untrack()
	sni, replay, err := peekClientHello(c, s.live().Timeouts.TLSHandshake.D())
	if err != nil {
		s.metrics.handshakeErrors.Inc()
		s.log.Debug("transparent TLS: no ClientHello", "client_ip", c.RemoteAddr().String(), "error", err.Error())
		c.Close()
		return
	}
	authority := ""
	if sni != "" {
		authority = net.JoinHostPort(sni, port)
	}
	r := (&http.Request{
		Method: http.MethodConnect, URL: &url.URL{Host: authority}, Host: authority, RequestURI: authority,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Body: http.NoBody,
		RemoteAddr: c.RemoteAddr().String(),
	}).WithContext(decision.WithEntry(base, decision.EntryTransparentTLS))
	w := &transparentWriter{conn: replay}
	s.pipeline.ServeHTTP(w, r)
	if !w.hijacked {
		// Refused: the client speaks TLS, so it gets an alert, not a body.
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(accessDeniedAlert)
		c.Close()
	}
}

// accessDeniedAlert is a TLS fatal alert record, access_denied (RFC 8446
// section 6.2), sent before any ServerHello.
var accessDeniedAlert = []byte{21, 3, 1, 0, 2, 2, 49}

var errPeeked = errors.New("ClientHello read")

// peekClientHello reads the ClientHello with crypto/tls (which stops there:
// no answer is written) and returns its SNI and a connection that replays
// every byte read before going on with c.
func peekClientHello(c net.Conn, timeout time.Duration) (string, net.Conn, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	rec := &recordingConn{Conn: c}
	var sni string
	var seen bool
	err := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni, seen = h.ServerName, true
		return nil, errPeeked
	}}).Handshake()
	if !seen {
		return "", nil, err
	}
	return sni, &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(rec.read.Bytes()), c)}, nil
}

// recordingConn keeps what is read and writes nothing: peeking must not
// answer the client.
type recordingConn struct {
	net.Conn
	read bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) { return len(p), nil }

// replayConn reads what was peeked, then the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection for the splice.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// transparentWriter is the response writer of a transparent connection's
// CONNECT: the CONNECT stage takes the connection over; a refusal's status
// is recorded (for the access log) and its body goes nowhere, since the
// client speaks TLS.
type transparentWriter struct {
	conn     net.Conn
	header   http.Header
	hijacked bool
}

func (w *transparentWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *transparentWriter) WriteHeader(int) {}

func (w *transparentWriter) Write(p []byte) (int, error) { return len(p), nil }

func (w *transparentWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}
