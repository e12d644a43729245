package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// trusted is the set of peers allowed to name the real client.
type trusted []netip.Prefix

func (t trusted) has(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func addrOf(hostport string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		a, err := netip.ParseAddr(hostport)
		return a.Unmap(), err == nil
	}
	return ap.Addr().Unmap(), true
}

// realClient replaces the client address of requests from trusted peers
// with the last address in X-Forwarded-For that is not itself trusted
// (the rightmost is the one the nearest trusted proxy saw). From any other
// peer the header is ignored: a client cannot name itself.
func (s *Server) realClient(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := s.state.Load().reverseTrusted
		peer, ok := addrOf(r.RemoteAddr)
		if !ok || len(t) == 0 || !t.has(peer) {
			next.ServeHTTP(w, r)
			return
		}
		var hops []string
		for _, v := range r.Header.Values("X-Forwarded-For") {
			for h := range strings.SplitSeq(v, ",") {
				hops = append(hops, strings.TrimSpace(h))
			}
		}
		for i := len(hops) - 1; i >= 0; i-- {
			a, ok := addrOf(hops[i])
			if !ok {
				break // a hop that is no address: trust nothing beyond it
			}
			if !t.has(a) {
				r2 := *r
				r2.RemoteAddr = net.JoinHostPort(a.String(), "0")
				next.ServeHTTP(w, &r2)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// proxyProtoListener reads a PROXY protocol header (v1 or v2) from each
// connection of a trusted peer, off the accept loop, and hands the
// connection on with the client's address as its remote address.
type proxyProtoListener struct {
	net.Listener
	trusted func() trusted
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
}

func newProxyProtoListener(ln net.Listener, t func() trusted) *proxyProtoListener {
	l := &proxyProtoListener{Listener: ln, trusted: t, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func (l *proxyProtoListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.Close()
			return
		}
		go func() {
			pc, err := l.wrap(c)
			if err != nil {
				c.Close()
				return
			}
			select {
			case l.conns <- pc:
			case <-l.done:
				c.Close()
			}
		}()
	}
}

func (l *proxyProtoListener) wrap(c net.Conn) (net.Conn, error) {
	peer, ok := addrOf(c.RemoteAddr().String())
	if !ok || !l.trusted().has(peer) {
		return c, nil // only trusted peers may name the client
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	src, err := readProxyHeader(br)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, err
	}
	return &proxiedConn{Conn: c, r: br, remote: src}, nil
}

func (l *proxyProtoListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *proxyProtoListener) Close() error {
	l.once.Do(func() { close(l.done); l.Listener.Close() })
	return nil
}

type proxiedConn struct {
	net.Conn
	r      *bufio.Reader
	remote net.Addr // nil: the header said LOCAL (a health check)
}

func (c *proxiedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *proxiedConn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// readProxyHeader reads a PROXY protocol v1 or v2 header and returns the
// client's address (nil for LOCAL/UNKNOWN).
func readProxyHeader(br *bufio.Reader) (net.Addr, error) {
	head, err := br.Peek(12)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(head, proxyV2Sig) {
		return readProxyV2(br)
	}
	line, err := br.ReadSlice('\n')
	if err != nil || len(line) > 107 || !bytes.HasPrefix(line, []byte("PROXY ")) {
		return nil, errors.New("missing PROXY protocol header")
	}
	f := strings.Fields(strings.TrimSpace(string(line)))
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		return nil, nil
	}
	if len(f) != 6 || f[1] != "TCP4" && f[1] != "TCP6" {
		return nil, fmt.Errorf("bad PROXY v1 header %q", line)
	}
	a, err := netip.ParseAddr(f[2])
	port, perr := strconv.ParseUint(f[4], 10, 16)
	if err != nil || perr != nil {
		return nil, fmt.Errorf("bad PROXY v1 header %q", line)
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a.Unmap(), uint16(port))), nil
}

func readProxyV2(br *bufio.Reader) (net.Addr, error) {
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return nil, err
	}
	verCmd, fam := hdr[12], hdr[13]
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, err
	}
	if verCmd>>4 != 2 {
		return nil, errors.New("bad PROXY v2 version")
	}
	if verCmd&0x0f == 0 { // LOCAL: the proxy's own connection
		return nil, nil
	}
	switch fam >> 4 {
	case 1: // IPv4
		if n < 12 {
			return nil, errors.New("short PROXY v2 IPv4 header")
		}
		a := netip.AddrFrom4([4]byte(body[0:4]))
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[8:10]))), nil
	case 2: // IPv6
		if n < 36 {
			return nil, errors.New("short PROXY v2 IPv6 header")
		}
		a := netip.AddrFrom16([16]byte(body[0:16])).Unmap()
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[32:34]))), nil
	}
	return nil, nil // UNSPEC or a unix socket: keep the peer's address
}
