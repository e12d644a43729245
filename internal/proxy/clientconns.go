package proxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/config"
)

// clientConns counts the open connections of each client address across
// every listener, for limits.connections_per_client: one client cannot
// hold all of sluice's descriptors and goroutines, whatever it sends.
type clientConns struct {
	// max returns the cap in force (0: none), so that a reload changes it.
	max func() int
	// ipv6Prefix is bans.ipv6_prefix: an IPv6 client is counted by its network.
	ipv6Prefix int
	refused    *prometheus.CounterVec

	mu   sync.Mutex
	open map[netip.Prefix]int
}

func newClientConns(max func() int, ipv6Prefix int, refused *prometheus.CounterVec) *clientConns {
	return &clientConns{max: max, ipv6Prefix: ipv6Prefix, refused: refused, open: map[netip.Prefix]int{}}
}

// listener returns ln with the cap applied to its connections. name labels
// the refusals; exempt peers (a load balancer in front of the reverse
// listener) are not counted; plainHTTP listeners tell a refused client why
// before they close.
func (cc *clientConns) listener(ln net.Listener, name string, plainHTTP bool, exempt func(netip.Addr) bool) net.Listener {
	cc.refused.WithLabelValues(name)
	return &capListener{Listener: ln, cc: cc, name: name, plainHTTP: plainHTTP, exempt: exempt}
}

type capListener struct {
	net.Listener
	cc        *clientConns
	name      string
	plainHTTP bool
	exempt    func(netip.Addr) bool
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tcp, ok := c.RemoteAddr().(*net.TCPAddr)
		if !ok || l.exempt != nil && l.exempt(tcp.AddrPort().Addr().Unmap()) {
			return c, nil
		}
		key := config.ClientNetwork(tcp.AddrPort().Addr(), l.cc.ipv6Prefix)
		if !l.cc.admit(key) {
			l.cc.refused.WithLabelValues(l.name).Inc()
			go l.refuse(c)
			continue
		}
		return &countedConn{Conn: c, release: func() { l.cc.leave(key) }}, nil
	}
}

// admit counts one more connection of key, unless that passes the cap.
func (cc *clientConns) admit(key netip.Prefix) bool {
	max := cc.max()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if max > 0 && cc.open[key] >= max {
		return false
	}
	cc.open[key]++
	return true
}

func (cc *clientConns) leave(key netip.Prefix) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.open[key]--; cc.open[key] <= 0 {
		delete(cc.open, key)
	}
}

// refuse closes a connection over the cap; a plain HTTP client is told
// why first (a TLS one would only see a failed handshake).
func (l *capListener) refuse(c net.Conn) {
	defer c.Close()
	if !l.plainHTTP {
		return
	}
	body := fmt.Sprintf(`{"error":"too many connections","detail":"this client address holds %d connections to sluice already (limits.connections_per_client)"}`+"\n", l.cc.max())
	c.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	// Let the answer leave before the close: a close with unread request
	// bytes would reset the connection and lose it.
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
}

// countedConn gives its place back once, when it is closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes, as the TCP connection it wraps does: a tunnel
// passes its client's end on.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

var _ net.Conn = (*countedConn)(nil)
