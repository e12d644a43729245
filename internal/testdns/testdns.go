// Package testdns is a resolver on loopback for tests: it answers the A
// and AAAA records a test sets, NXDOMAIN for every other name, and counts
// the queries for each name.
package testdns

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Resolver is a DNS server on 127.0.0.1, UDP and TCP on one port.
type Resolver struct {
	Addr string

	mu      sync.Mutex
	answers map[string][]netip.Addr
	queries map[string]int
}

// Start serves on a loopback port until the test ends.
func Start(t testing.TB) *Resolver {
	t.Helper()
	pc, ln := Listen(t)
	return Serve(t, pc, ln)
}

// Serve serves on pc and ln (one address, UDP and TCP) until the test ends.
func Serve(t testing.TB, pc net.PacketConn, ln net.Listener) *Resolver {
	t.Helper()
	r := &Resolver{answers: map[string][]netip.Addr{}, queries: map[string]int{}}
	r.Addr = ln.Addr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: r}, {Listener: ln, Handler: r}} {
		go srv.ActivateAndServe()
		t.Cleanup(func() { srv.Shutdown() })
	}
	return r
}

// Listen opens UDP and TCP on one loopback port, as a DNS server serves.
func Listen(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	return pc, ln
}

// Set makes name resolve to addrs from now on.
func (r *Resolver) Set(name string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[name] = nil
	for _, a := range addrs {
		r.answers[name] = append(r.answers[name], netip.MustParseAddr(a))
	}
}

// Queries returns how many questions named name.
func (r *Resolver) Queries(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queries[name]
}

// ServeDNS answers from what Set set.
func (r *Resolver) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	if len(q.Question) != 1 {
		m.SetRcodeFormatError(q)
		w.WriteMsg(m)
		return
	}
	question := q.Question[0]
	name := strings.TrimSuffix(strings.ToLower(question.Name), ".")
	r.mu.Lock()
	r.queries[name]++
	addrs, ok := r.answers[name]
	r.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	hdr := dns.RR_Header{Name: question.Name, Rrtype: question.Qtype, Class: dns.ClassINET, Ttl: 60}
	for _, a := range addrs {
		switch {
		case question.Qtype == dns.TypeA && a.Is4():
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case question.Qtype == dns.TypeAAAA && a.Is6():
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	w.WriteMsg(m)
}
