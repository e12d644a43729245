// Package resolve is how sluice itself resolves upstream names: the
// resolvers dns.resolvers lists (plain DNS, or DNS over TLS), and, with
// dns.pin: first, the pin of each host's first good answer, kept in the
// data dir, used for every later connection and checked again every
// dns.recheck: an answer that disagrees is reported, never followed, until
// an operator accepts it.
//
// Config keys: dns.resolvers, dns.pin, dns.recheck.
// Metrics: sluice_dns_pins, sluice_dns_pins_disagreeing,
// sluice_dns_pin_disagreements_total.
package resolve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Server is one resolver of dns.resolvers.
type Server struct {
	Addr string // host:port
	// TLS is DNS over TLS (RFC 7858), verified against the system roots
	// for ServerName.
	TLS        bool
	ServerName string
}

func (s Server) String() string {
	if s.TLS {
		return "tls://" + s.Addr
	}
	return s.Addr
}

// ParseServer reads "IP:port", "IP" (port 53) or "tls://HOST[:853]".
func ParseServer(s string) (Server, error) {
	if rest, ok := strings.CutPrefix(s, "tls://"); ok {
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			host, port = rest, "853"
		}
		if host == "" {
			return Server{}, fmt.Errorf("%q: want tls://HOST or tls://HOST:PORT", s)
		}
		return Server{Addr: net.JoinHostPort(host, port), TLS: true, ServerName: host}, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return Server{Addr: ap.String()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return Server{Addr: netip.AddrPortFrom(a, 53).String()}, nil
	}
	return Server{}, fmt.Errorf("%q: want IP, IP:port or tls://HOST:853", s)
}

// Client resolves names with its servers, in order: the next is asked
// when one fails to answer. It implements dialer.Resolver.
type Client struct {
	Servers []Server
	// Timeout bounds each exchange; 0 is 2 s.
	Timeout time.Duration
	// RootCAs verify DNS-over-TLS servers; nil: the system roots.
	RootCAs *x509.CertPool
}

// LookupNetIP asks for the A and AAAA records of host.
func (c *Client) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	var errs []error
	for _, srv := range c.Servers {
		addrs, err := c.lookup(ctx, srv, host)
		if err == nil {
			return addrs, nil
		}
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, err // an answer, not a failure: the next server is not asked
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no resolvers")
	}
	return nil, errors.Join(errs...)
}

func (c *Client) lookup(ctx context.Context, srv Server, host string) ([]netip.Addr, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		addrs []netip.Addr
		errs  []error
		codes []int
	)
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		wg.Go(func() {
			r, err := c.exchange(ctx, srv, host, qtype)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			codes = append(codes, r.Rcode)
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *dns.A:
					if a, ok := netip.AddrFromSlice(rr.A); ok {
						addrs = append(addrs, a.Unmap())
					}
				case *dns.AAAA:
					if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
						addrs = append(addrs, a)
					}
				}
			}
		})
	}
	wg.Wait()
	switch {
	case len(addrs) > 0:
		return addrs, nil
	case len(errs) > 0:
		return nil, fmt.Errorf("resolver %s: %w", srv, errors.Join(errs...))
	}
	for _, rc := range codes {
		if rc != dns.RcodeSuccess && rc != dns.RcodeNameError {
			return nil, fmt.Errorf("resolver %s answered %s for %s", srv, dns.RcodeToString[rc], host)
		}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, Server: srv.String(), IsNotFound: true}
}

// exchange asks srv one question: over UDP and again over TCP when the
// answer is truncated, or over TLS.
func (c *Client) exchange(ctx context.Context, srv Server, host string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(host), qtype)
	m.SetEdns0(1232, false)
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	cl := &dns.Client{Net: "udp", Timeout: timeout}
	if srv.TLS {
		cl = &dns.Client{Net: "tcp-tls", Timeout: timeout, TLSConfig: &tls.Config{ServerName: srv.ServerName, RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12}}
	}
	r, _, err := cl.ExchangeContext(ctx, m, srv.Addr)
	if err == nil && r.Truncated && !srv.TLS {
		cl.Net = "tcp"
		r, _, err = cl.ExchangeContext(ctx, m, srv.Addr)
	}
	if err != nil {
		return nil, err
	}
	if r.Id != m.Id {
		return nil, errors.New("answer to another question")
	}
	return r, nil
}
