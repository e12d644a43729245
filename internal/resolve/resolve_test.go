package resolve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"sluice/internal/testdns"
	"sluice/internal/testpki"
)

func TestParseServer(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5353": "127.0.0.1:5353", "9.9.9.9": "9.9.9.9:53", "[::1]:53": "[::1]:53",
		"tls://dns.quad9.net": "tls://dns.quad9.net:853", "tls://1.1.1.1:853": "tls://1.1.1.1:853",
	} {
		if s, err := ParseServer(in); err != nil || s.String() != want {
			t.Errorf("ParseServer(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for _, bad := range []string{"dns.google", "udp://9.9.9.9", "tls://", "9.9.9.9:x"} {
		if _, err := ParseServer(bad); err == nil {
			t.Errorf("ParseServer(%q) accepted", bad)
		}
	}
}

// TestClient: A and AAAA come together; a name the resolver does not know
// is "not found" (no other server is asked); a resolver that does not
// answer is skipped for the next.
func TestClient(t *testing.T) {
	r := testdns.Start(t)
	r.Set("api.test", "192.0.2.1", "2001:db8::1")
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	c := &Client{Servers: []Server{{Addr: dead.LocalAddr().String()}, {Addr: r.Addr}}, Timeout: 200e6}
	addrs, err := c.LookupNetIP(context.Background(), "ip", "api.test")
	if err != nil || fmt.Sprint(addrs) != "[192.0.2.1 2001:db8::1]" && fmt.Sprint(addrs) != "[2001:db8::1 192.0.2.1]" {
		t.Errorf("api.test: %v %v", addrs, err)
	}
	var dnsErr *net.DNSError
	if _, err := c.LookupNetIP(context.Background(), "ip", "nowhere.test"); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("nowhere.test: %v, want not found", err)
	}
}

// TestDNSOverTLS: a tls:// resolver is asked over TLS and verified; one
// whose certificate does not verify is not believed.
func TestDNSOverTLS(t *testing.T) {
	ca := testpki.NewCA(t, "resolver CA")
	cert := ca.Leaf(t, "dot.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	answers := testdns.Start(t) // the handler; served here over TLS
	answers.Set("api.test", "192.0.2.7")
	srv := &dns.Server{Listener: ln, Net: "tcp-tls", Handler: answers}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	s, err := ParseServer("tls://dot.test:" + port)
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String() // dot.test is the name verified; dialed on loopback
	c := &Client{Servers: []Server{s}, RootCAs: ca.Pool()}
	if addrs, err := c.LookupNetIP(context.Background(), "ip", "api.test"); err != nil || fmt.Sprint(addrs) != "[192.0.2.7]" {
		t.Errorf("over TLS: %v %v", addrs, err)
	}
	c.RootCAs = testpki.NewCA(t, "another CA").Pool()
	if addrs, err := c.LookupNetIP(context.Background(), "ip", "api.test"); err == nil {
		t.Errorf("a resolver whose certificate does not verify was believed: %v", addrs)
	}
	if answers.Queries("api.test") != 2 { // both A and AAAA, once
		t.Errorf("%d questions reached the resolver; want the 2 of the verified exchange only", answers.Queries("api.test"))
	}
}

// TestPins: a pin is kept across a reopen; a recheck that disagrees is
// recorded and counted and moves nothing; Accept moves it.
func TestPins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dns-pins.json")
	reg := prometheus.NewRegistry()
	p, err := OpenPins(path, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	p.Pin("api.test", []netip.Addr{netip.MustParseAddr("192.0.2.1")})
	p.Pin("api.test", []netip.Addr{netip.MustParseAddr("192.0.2.99")}) // the first answer holds
	p, err = OpenPins(path, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if addrs, ok := p.Pinned("api.test"); !ok || fmt.Sprint(addrs) != "[192.0.2.1]" {
		t.Fatalf("after reopening: %v %v", addrs, ok)
	}
	r := testdns.Start(t)
	r.Set("api.test", "192.0.2.1", "192.0.2.2") // overlaps: agrees
	c := &Client{Servers: []Server{{Addr: r.Addr}}}
	p.Recheck(context.Background(), c)
	if x := p.List()[0]; len(x.Disagreeing) != 0 {
		t.Errorf("an overlapping answer was taken as disagreeing: %v", x)
	}
	if _, err := p.Accept("api.test"); err == nil {
		t.Error("Accept with nothing disagreeing succeeded")
	}
	r.Set("api.test", "203.0.113.66") // hijacked
	p.Recheck(context.Background(), c)
	if x := p.List()[0]; fmt.Sprint(x.Disagreeing) != "[203.0.113.66]" || fmt.Sprint(x.Addrs) != "[192.0.2.1]" {
		t.Errorf("after a disagreeing answer: %+v", x)
	}
	if addrs, _ := p.Pinned("api.test"); fmt.Sprint(addrs) != "[192.0.2.1]" {
		t.Errorf("the pin followed a disagreeing answer: %v", addrs)
	}
	if n := testutil.ToFloat64(p.disagreements); n != 1 {
		t.Errorf("disagreements counted %v", n)
	}
	if n := testutil.ToFloat64(p.disagreeing); n != 1 {
		t.Errorf("sluice_dns_pins_disagreeing = %v", n)
	}
	if x, err := p.Accept("api.test"); err != nil || fmt.Sprint(x.Addrs) != "[203.0.113.66]" || len(x.Disagreeing) != 0 {
		t.Errorf("Accept: %+v %v", x, err)
	}
}
