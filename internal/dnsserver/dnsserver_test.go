package dnsserver

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// start serves answers on loopback UDP and TCP and returns the address.
func start(t *testing.T, answers *atomic.Pointer[Answers], rateLimit int) (string, *Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(Options{Answers: answers.Load, RateLimit: rateLimit, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := ListenUDP(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), s, reg
}

func allowing(names ...string) *Answers {
	return &Answers{
		Allowed: func(n string) bool {
			for _, a := range names {
				if n == a || strings.HasPrefix(a, "*.") && strings.HasSuffix(n, a[1:]) {
					return true
				}
			}
			return false
		},
		V4: []netip.Addr{netip.MustParseAddr("127.0.0.53")},
		V6: []netip.Addr{netip.MustParseAddr("::1")},
	}
}

func query(t *testing.T, net, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := (&dns.Client{Net: net}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", net, name, dns.TypeToString[qtype], err)
	}
	return r
}

// TestAnswers: allowed names (in any case, under a wildcard) get sluice's
// addresses, over UDP and TCP, without the recursion flag; other types of
// an allowed name get an empty answer; every other name is refused, or
// NXDOMAIN when configured.
func TestAnswers(t *testing.T) {
	var answers atomic.Pointer[Answers]
	answers.Store(allowing("api.binance.com", "*.myshopify.com"))
	addr, _, reg := start(t, &answers, 0)
	for _, proto := range []string{"udp", "tcp"} {
		r := query(t, proto, addr, "API.Binance.com", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.53" || r.RecursionAvailable {
			t.Errorf("%s A api.binance.com: %v", proto, r)
		}
		r = query(t, proto, addr, "shop.myshopify.com", dns.TypeAAAA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "::1" {
			t.Errorf("%s AAAA shop.myshopify.com: %v", proto, r)
		}
	}
	if r := query(t, "udp", addr, "api.binance.com", dns.TypeMX); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("MX of an allowed name: %v, want NOERROR with no answer", r)
	}
	for _, name := range []string{"evil.test", "myshopify.com", "binance.com"} {
		if r := query(t, "udp", addr, name, dns.TypeA); r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("A %s: %v, want REFUSED", name, r)
		}
	}
	a := *answers.Load()
	a.NXDomain = true
	answers.Store(&a)
	if r := query(t, "udp", addr, "evil.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("A evil.test with refuse: nxdomain: %v", r)
	}
	// A reload: the next query is answered from the new config.
	answers.Store(allowing("api.kraken.com"))
	if r := query(t, "udp", addr, "api.binance.com", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("a host the reload removed: %v, want REFUSED", r)
	}
	if r := query(t, "udp", addr, "api.kraken.com", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("a host the reload added: %v", r)
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "A", resultNames[resultRefused])); n != 4 {
		t.Errorf("refused A queries counted %v, want 4", n)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, qtype, result string) prometheus.Collector {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "sluice_dns_queries_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["type"] == qtype && labels["result"] == result {
				c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
				c.Add(m.GetCounter().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no sluice_dns_queries_total{type=%q,result=%q}", qtype, result)
	return nil
}

// TestMalformed: a query with two questions, or another opcode, gets
// FORMERR or NOTIMP, never an answer.
func TestMalformed(t *testing.T) {
	var answers atomic.Pointer[Answers]
	answers.Store(allowing("api.binance.com"))
	addr, _, _ := start(t, &answers, 0)
	m := new(dns.Msg)
	m.SetQuestion("api.binance.com.", dns.TypeA)
	m.Question = append(m.Question, dns.Question{Name: "evil.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	r, _, err := new(dns.Client).Exchange(m, addr)
	if err != nil || r.Rcode != dns.RcodeFormatError || len(r.Answer) != 0 {
		t.Errorf("two questions: %v %v, want FORMERR", r, err)
	}
	m = new(dns.Msg)
	m.SetNotify("api.binance.com.")
	r, _, err = new(dns.Client).Exchange(m, addr)
	if err != nil || r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %v %v, want NOTIMP", r, err)
	}
}

// TestRateLimit: past its rate a client's UDP queries go unanswered and
// its TCP ones are refused.
func TestRateLimit(t *testing.T) {
	var answers atomic.Pointer[Answers]
	answers.Store(allowing("api.binance.com"))
	addr, _, reg := start(t, &answers, 5)
	var codes []int
	for range 8 {
		codes = append(codes, query(t, "tcp", addr, "api.binance.com", dns.TypeA).Rcode)
	}
	if ok := slices.Equal(codes[:5], []int{0, 0, 0, 0, 0}) && slices.Contains(codes[5:], dns.RcodeRefused); !ok {
		t.Errorf("rcodes of 8 TCP queries at once over a rate of 5/s: %v; want 5 answers, then REFUSED", codes)
	}
	m := new(dns.Msg)
	m.SetQuestion("api.binance.com.", dns.TypeA)
	if r, _, err := (&dns.Client{Net: "udp", Timeout: 100 * time.Millisecond}).Exchange(m, addr); err == nil {
		t.Errorf("UDP past the rate was answered: %v", r)
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "A", resultNames[resultRateLimited])); n < 2 {
		t.Errorf("rate-limited queries counted %v", n)
	}
}

// BenchmarkRespond is the cost of answering one allowed A query over UDP,
// past the socket: parse, decide, build and pack the answer (no rate limit).
func BenchmarkRespond(b *testing.B) {
	var answers atomic.Pointer[Answers]
	answers.Store(allowing("api.binance.com"))
	s, err := New(Options{Answers: answers.Load})
	if err != nil {
		b.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion("api.binance.com.", dns.TypeA)
	wire, _ := q.Pack()
	client := netip.MustParseAddr("127.0.0.1")
	buf := make([]byte, 0, 1232)
	b.ReportAllocs()
	for b.Loop() {
		m := new(dns.Msg)
		if err := m.Unpack(wire); err != nil {
			b.Fatal(err)
		}
		if _, err := s.respond(m, client, true).PackBuffer(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWildcardAnswersFromTheQueriedAddress: on a socket bound to 0.0.0.0
// a query sent to 127.0.0.2 is answered from 127.0.0.2, or a client's
// connected socket would drop the answer.
func TestWildcardAnswersFromTheQueriedAddress(t *testing.T) {
	var answers atomic.Pointer[Answers]
	answers.Store(allowing("api.binance.com"))
	s, err := New(Options{Answers: answers.Load})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := ListenUDP("0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, nil) }()
	defer func() { cancel(); <-done }()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	for _, dst := range []string{"127.0.0.1", "127.0.0.2"} {
		r := query(t, "udp", net.JoinHostPort(dst, strconv.Itoa(port)), "api.binance.com", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Errorf("query to %s: %v", dst, r)
		}
	}
}
