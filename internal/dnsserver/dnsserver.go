// Package dnsserver is the DNS server for clients that cannot be pointed
// at a proxy: every name the live config allows is answered with the
// addresses at which clients reach sluice (dns.answer), every other name
// is refused (or NXDOMAIN), and nothing is ever forwarded or recursed.
// Each client gets at most dns.rate_limit responses a second.
//
// Config keys: listen.dns, dns.answer, dns.refuse, dns.rate_limit.
// Metrics: sluice_dns_queries_total{type,result}.
package dnsserver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"sluice/internal/hostport"
	"sluice/internal/metrics"
)

// Answers is what the server answers from: one config's, swapped whole at
// each reload.
type Answers struct {
	// Allowed reports whether a normalised name is one sluice serves.
	Allowed func(name string) bool
	V4, V6  []netip.Addr
	// NXDomain answers other names NXDOMAIN instead of REFUSED.
	NXDomain bool
}

// TTL of every answer: short, so that a reload reaches clients soon.
const TTL = 30

// Options are what New needs.
type Options struct {
	// Answers returns the answers in force; required.
	Answers func() *Answers
	// RateLimit is the responses per second per client (0: no limit).
	RateLimit  int
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Server answers DNS queries. It is safe for concurrent use.
type Server struct {
	answers func() *Answers
	log     *slog.Logger
	perSec  int
	clients *lru.Cache[netip.Addr, *rate.Limiter]
	queries *prometheus.CounterVec
}

// clientMemory bounds the clients whose rate is tracked; one forgotten
// starts again with a full allowance.
const clientMemory = 65536

// The results a query is counted by.
const (
	resultAnswered    = "answered"
	resultNoData      = "nodata" // an allowed name, a type sluice has no records of
	resultRefused     = "refused"
	resultNXDomain    = "nxdomain"
	resultRateLimited = "rate_limited"
	resultMalformed   = "malformed"
)

// New builds a Server; it serves nothing until Serve.
func New(opts Options) (*Server, error) {
	if opts.Answers == nil {
		return nil, errors.New("dnsserver: Options.Answers is required")
	}
	clients, err := lru.New[netip.Addr, *rate.Limiter](clientMemory)
	if err != nil {
		return nil, err
	}
	s := &Server{answers: opts.Answers, log: opts.Log, perSec: opts.RateLimit, clients: clients,
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "dns", Name: "queries_total",
			Help: "DNS queries answered by sluice's DNS server, by query type (A, AAAA, other) and result."}, []string{"type", "result"})}
	for _, t := range []string{"A", "AAAA", "other"} {
		for _, r := range []string{resultAnswered, resultNoData, resultRefused, resultNXDomain, resultRateLimited, resultMalformed} {
			s.queries.WithLabelValues(t, r)
		}
	}
	return s, metrics.Register(opts.Registerer, s.queries)
}

// Serve answers on pc (UDP) and ln (TCP), either may be nil, until ctx ends.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	var servers []*dns.Server
	if pc != nil {
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: s})
	}
	if ln != nil {
		servers = append(servers, &dns.Server{Listener: ln, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(func() { srv.Shutdown() })
	}
	wg.Wait()
	return first
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	client := clientAddr(w.RemoteAddr())
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	qtype := "other"
	if len(q.Question) == 1 {
		switch q.Question[0].Qtype {
		case dns.TypeA:
			qtype = "A"
		case dns.TypeAAAA:
			qtype = "AAAA"
		}
	}
	if !s.allow(client) {
		s.queries.WithLabelValues(qtype, resultRateLimited).Inc()
		if udp {
			return // dropped: a flood spoofing this address gets nothing to reflect
		}
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeRefused)
		w.WriteMsg(m)
		return
	}
	m, result := s.answer(q)
	s.queries.WithLabelValues(qtype, result).Inc()
	if result != resultAnswered && result != resultNoData && s.log != nil {
		name := ""
		if len(q.Question) == 1 {
			name = q.Question[0].Name
		}
		s.log.Info("dns query refused", "client_ip", client.String(), "name", name, "type", qtype, "result", result)
	}
	if udp {
		size := dns.MinMsgSize
		if o := q.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// answer builds the response to q and names its result.
func (s *Server) answer(q *dns.Msg) (*dns.Msg, string) {
	m := new(dns.Msg)
	if q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 || q.Question[0].Qclass != dns.ClassINET || q.Response {
		m.SetRcodeFormatError(q)
		if q.Opcode != dns.OpcodeQuery {
			m.SetRcode(q, dns.RcodeNotImplemented)
		}
		return m, resultMalformed
	}
	m.SetReply(q)
	m.RecursionAvailable = false // no recursion, for anyone
	if o := q.IsEdns0(); o != nil {
		m.SetEdns0(1232, false)
	}
	a := s.answers()
	question := q.Question[0]
	name, err := hostport.NormalizeHost(strings.TrimSuffix(question.Name, "."))
	if err != nil || !a.Allowed(name) {
		if a.NXDomain {
			m.Rcode = dns.RcodeNameError
			return m, resultNXDomain
		}
		m.Rcode = dns.RcodeRefused
		return m, resultRefused
	}
	m.Authoritative = true
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: question.Name, Rrtype: t, Class: dns.ClassINET, Ttl: TTL}
	}
	switch question.Qtype {
	case dns.TypeA:
		for _, ip := range a.V4 {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip.AsSlice()})
		}
	case dns.TypeAAAA:
		for _, ip := range a.V6 {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip.AsSlice()})
		}
	}
	if len(m.Answer) == 0 {
		return m, resultNoData
	}
	return m, resultAnswered
}

func (s *Server) allow(client netip.Addr) bool {
	if s.perSec <= 0 {
		return true
	}
	l, ok := s.clients.Get(client)
	if !ok {
		l = rate.NewLimiter(rate.Limit(s.perSec), s.perSec)
		if prev, ok, _ := s.clients.PeekOrAdd(client, l); ok {
			l = prev
		}
	}
	return l.Allow()
}

func clientAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}
