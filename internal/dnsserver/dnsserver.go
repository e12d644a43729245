// Package dnsserver is the DNS server for clients that cannot be pointed
// at a proxy: every name the live config allows is answered with the
// addresses at which clients reach sluice (dns.answer), every other name
// is refused (or NXDOMAIN), and nothing is ever forwarded or recursed.
// Each client gets at most dns.rate_limit responses a second. Every query
// is logged: a refused one at info, an answered one at debug.
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
	"runtime"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
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
	counts  [len(qtypeNames)][len(resultNames)]prometheus.Counter
}

// clientMemory bounds the clients whose rate is tracked; one forgotten
// starts again with a full allowance.
const clientMemory = 65536

// What a query is counted by.
type qtype int

const (
	qtypeA qtype = iota
	qtypeAAAA
	qtypeOther
)

var qtypeNames = [...]string{qtypeA: "A", qtypeAAAA: "AAAA", qtypeOther: "other"}

type result int

const (
	resultAnswered result = iota
	resultNoData          // an allowed name, a type sluice has no records of
	resultRefused
	resultNXDomain
	resultRateLimited
	resultMalformed
)

var resultNames = [...]string{resultAnswered: "answered", resultNoData: "nodata", resultRefused: "refused",
	resultNXDomain: "nxdomain", resultRateLimited: "rate_limited", resultMalformed: "malformed"}

// New builds a Server; it serves nothing until Serve.
func New(opts Options) (*Server, error) {
	if opts.Answers == nil {
		return nil, errors.New("dnsserver: Options.Answers is required")
	}
	clients, err := lru.New[netip.Addr, *rate.Limiter](clientMemory)
	if err != nil {
		return nil, err
	}
	s := &Server{answers: opts.Answers, log: opts.Log, perSec: opts.RateLimit, clients: clients}
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "dns", Name: "queries_total",
		Help: "DNS queries answered by sluice's DNS server, by query type (A, AAAA, other) and result."}, []string{"type", "result"})
	for t, tn := range qtypeNames {
		for r, rn := range resultNames {
			s.counts[t][r] = queries.WithLabelValues(tn, rn)
		}
	}
	return s, metrics.Register(opts.Registerer, queries)
}

// ListenUDP opens the UDP socket for addr (IP:port) in the address's own
// family, as Serve wants it.
func ListenUDP(addr string) (*net.UDPConn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	network := "udp6"
	if ap.Addr().Unmap().Is4() {
		network = "udp4"
	}
	return net.ListenUDP(network, net.UDPAddrFromAddrPort(ap))
}

// Serve answers on pc (UDP: a "udp4" or "udp6" socket, see ListenUDP)
// and ln (TCP), either may be nil, until ctx ends; it closes both.
func (s *Server) Serve(ctx context.Context, pc *net.UDPConn, ln net.Listener) error {
	errc := make(chan error, 1+runtime.GOMAXPROCS(0))
	var udp sync.WaitGroup
	if pc != nil {
		bc, oob := batchConn(pc)
		for range runtime.GOMAXPROCS(0) {
			udp.Go(func() { errc <- s.serveUDP(bc, oob) })
		}
	}
	var tcp *dns.Server
	if ln != nil {
		tcp = &dns.Server{Listener: ln, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
		go func() { errc <- tcp.ActivateAndServe() }()
	}
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	if pc != nil {
		pc.Close()
		udp.Wait()
	}
	if tcp != nil {
		tcp.Shutdown()
	}
	return first
}

// packetConn reads and writes batches of datagrams (recvmmsg and sendmmsg
// on Linux): one system call for many queries under load.
type packetConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// batchConn wraps c (a "udp4" or "udp6" socket); oob says whether each
// query's destination address comes with it, to answer from that address:
// a socket bound to 0.0.0.0 or [::] on a host with several addresses must
// not answer from another.
func batchConn(c *net.UDPConn) (packetConn, bool) {
	local, _ := c.LocalAddr().(*net.UDPAddr)
	wildcard := local != nil && local.IP.IsUnspecified()
	if local != nil && local.IP.To4() != nil {
		p := ipv4.NewPacketConn(c)
		return p, wildcard && p.SetControlMessage(ipv4.FlagDst, true) == nil
	}
	p := ipv6.NewPacketConn(c)
	return p, wildcard && p.SetControlMessage(ipv6.FlagDst, true) == nil
}

const udpBatch = 32

// serveUDP reads queries in batches and answers them in batches until the
// socket is closed.
func (s *Server) serveUDP(c packetConn, oob bool) error {
	in := make([]ipv4.Message, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 4096)}
		if oob {
			in[i].OOB = make([]byte, 128)
		}
	}
	out := make([]ipv4.Message, 0, udpBatch)
	outBufs := make([][]byte, udpBatch)
	for i := range outBufs {
		outBufs[i] = make([]byte, 0, 1232)
	}
	for {
		n, err := c.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Warn("dns: reading queries failed; going on", "error", err.Error())
			time.Sleep(10 * time.Millisecond)
			continue
		}
		out = out[:0]
		for i := range n {
			msg := &in[i]
			addr, _ := msg.Addr.(*net.UDPAddr)
			if addr == nil {
				continue
			}
			q := new(dns.Msg)
			if err := q.Unpack(msg.Buffers[0][:msg.N]); err != nil || q.Response {
				s.counts[qtypeOther][resultMalformed].Inc() // no answer: it could only feed a reflection
				continue
			}
			m := s.respond(q, addrOf(addr.IP), true)
			if m == nil {
				continue
			}
			packed, err := m.PackBuffer(outBufs[len(out)][:0])
			if err != nil {
				continue
			}
			reply := ipv4.Message{Buffers: [][]byte{packed}, Addr: addr}
			if oob {
				reply.OOB = sourceFor(msg.OOB[:msg.NN])
			}
			out = append(out, reply)
		}
		for sent := 0; sent < len(out); {
			k, err := c.WriteBatch(out[sent:], 0)
			if err != nil {
				break // the client's loss, as for any datagram; the next batch goes on
			}
			sent += k
		}
	}
}

// sourceFor returns the control message that sends a reply from the
// address the query was sent to.
func sourceFor(oob []byte) []byte {
	var cm4 ipv4.ControlMessage
	if cm4.Parse(oob) == nil && cm4.Dst != nil {
		return (&ipv4.ControlMessage{Src: cm4.Dst}).Marshal()
	}
	var cm6 ipv6.ControlMessage
	if cm6.Parse(oob) == nil && cm6.Dst != nil {
		return (&ipv6.ControlMessage{Src: cm6.Dst}).Marshal()
	}
	return nil
}

// ServeDNS answers one query over TCP (miekg's server).
func (s *Server) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	var client netip.Addr
	if a, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		client = addrOf(a.IP)
	}
	if m := s.respond(q, client, false); m != nil {
		w.WriteMsg(m)
	}
}

// respond is the answer to q from client, counted and, when refused,
// logged; nil: no answer (a UDP client past its rate).
func (s *Server) respond(q *dns.Msg, client netip.Addr, udp bool) *dns.Msg {
	qt := qtypeOther
	if len(q.Question) == 1 {
		switch q.Question[0].Qtype {
		case dns.TypeA:
			qt = qtypeA
		case dns.TypeAAAA:
			qt = qtypeAAAA
		}
	}
	if !s.allow(client) {
		s.counts[qt][resultRateLimited].Inc()
		if udp {
			return nil // dropped: a flood spoofing this address gets nothing to reflect
		}
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeRefused)
		return m
	}
	m, res := s.answer(q)
	s.counts[qt][res].Inc()
	if s.log != nil {
		refused := res != resultAnswered && res != resultNoData
		if level := slog.LevelDebug; refused || s.log.Enabled(context.Background(), level) {
			if refused {
				level = slog.LevelInfo
			}
			name := ""
			if len(q.Question) == 1 {
				name = q.Question[0].Name
			}
			s.log.Log(context.Background(), level, "dns query", "client_ip", client.String(), "name", name, "type", qtypeNames[qt], "result", resultNames[res])
		}
	}
	if udp {
		size := dns.MinMsgSize
		if o := q.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	return m
}

// answer builds the response to q and names its result.
func (s *Server) answer(q *dns.Msg) (*dns.Msg, result) {
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

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
