// Package dialer connects to upstreams. It resolves the name itself,
// classifies every address and dials only the addresses it checked, so a DNS
// answer cannot steer sluice to loopback, a private network or a cloud
// metadata service (SSRF) unless the host entry sets allow_private.
package dialer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"sluice/internal/hostport"
)

// Resolver looks up the addresses of a host; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Route says how to reach one host entry's upstream.
type Route struct {
	// ConnectTo, when set, is dialed instead of the target's own address.
	ConnectTo *hostport.HostPort
	// AllowPrivate permits non-public addresses.
	AllowPrivate bool
	// Timeout bounds resolving and connecting (timeouts.dial); 0 is the Dialer's.
	Timeout time.Duration
}

// Pinner keeps each name's first good answer (dns.pin: first).
type Pinner interface {
	Pinned(host string) ([]netip.Addr, bool)
	Pin(host string, addrs []netip.Addr)
}

// Dialer dials upstreams. The zero value is not usable; use New.
type Dialer struct {
	resolver Resolver
	timeout  time.Duration
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnRefuse, if set, is called for each address refused by the guard.
	OnRefuse func(Class)
	// Pins, if set, answers for the names it has pinned, and pins the
	// addresses the guard allowed of every other name's first answer.
	// Set it (like OnRefuse) before the first Dial.
	Pins Pinner
}

// UseResolver makes r resolve names from now on; call it before the first Dial.
func (d *Dialer) UseResolver(r Resolver) { d.resolver = r }

// Resolver returns the resolver names are looked up with.
func (d *Dialer) Resolver() Resolver { return d.resolver }

// New returns a Dialer that uses r for names (nil: the system resolver)
// and bounds resolving and connecting with timeout where a Route sets
// none (0: a minute). The bound is the context's alone, so that a
// route's timeouts.dial is never capped by the Dialer's.
func New(r Resolver, timeout time.Duration) *Dialer {
	if r == nil {
		r = &net.Resolver{}
	}
	if timeout <= 0 {
		timeout = time.Minute
	}
	nd := &net.Dialer{KeepAlive: 30 * time.Second}
	return &Dialer{resolver: r, timeout: timeout, dial: nd.DialContext}
}

// ErrForbidden is wrapped by errors for targets the SSRF guard refuses.
var ErrForbidden = errors.New("address not allowed")

// Error is a failure to reach an upstream, with the step that failed.
type Error struct {
	Op   string // "resolve", "guard" or "connect"
	Host string // the name sluice was asked for
	Addr string // the address involved, if any
	Err  error
}

func (e *Error) Error() string {
	if e.Addr != "" {
		return fmt.Sprintf("%s %s (%s): %v", e.Op, e.Host, e.Addr, e.Err)
	}
	return fmt.Sprintf("%s %s: %v", e.Op, e.Host, e.Err)
}
func (e *Error) Unwrap() error { return e.Err }

// Dial connects to target (or to route.ConnectTo), trying each allowed
// address of the name in turn, resolving and connecting within the timeout.
func (d *Dialer) Dial(ctx context.Context, target hostport.HostPort, route Route) (net.Conn, error) {
	timeout := d.timeout
	if route.Timeout > 0 {
		timeout = route.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dest := target
	if route.ConnectTo != nil {
		dest = *route.ConnectTo
	}
	addrs, pinned, err := d.resolve(ctx, dest.Host)
	if err != nil {
		return nil, &Error{Op: "resolve", Host: dest.Host, Err: err}
	}
	var allowed []netip.Addr
	var refused error
	for _, a := range addrs {
		a = a.Unmap()
		if c := Classify(a); c != Public && !route.AllowPrivate {
			if d.OnRefuse != nil {
				d.OnRefuse(c)
			}
			refused = &Error{Op: "guard", Host: dest.Host, Addr: a.String(),
				Err: fmt.Errorf("%w: %s is a %s address", ErrForbidden, a, c)}
			continue
		}
		allowed = append(allowed, a)
	}
	if len(allowed) == 0 {
		if refused == nil {
			refused = &Error{Op: "resolve", Host: dest.Host, Err: errors.New("no addresses")}
		}
		return nil, refused
	}
	if d.Pins != nil && !pinned {
		d.Pins.Pin(dest.Host, allowed) // never an address the guard refused: a rebinding answer is not kept
	}
	var errs []error
	for _, a := range allowed {
		addr := net.JoinHostPort(a.String(), strconv.Itoa(int(dest.Port)))
		c, err := d.dial(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, &Error{Op: "connect", Host: dest.Host, Addr: addr, Err: err})
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// resolve returns host's addresses, and whether they are its pin (an IP
// literal counts as pinned: there is nothing to keep).
func (d *Dialer) resolve(ctx context.Context, host string) ([]netip.Addr, bool, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, true, nil
	}
	if d.Pins != nil {
		if addrs, ok := d.Pins.Pinned(host); ok {
			return addrs, true, nil
		}
	}
	addrs, err := d.resolver.LookupNetIP(ctx, "ip", host)
	return addrs, false, err
}
