package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sluice/internal/app"
	"sluice/internal/testdns"
	"sluice/internal/testenv"
	"sluice/internal/testnetns"
	"sluice/internal/testpki"
)

// TestIsolation tries to escape. Three namespaces: a bot (10.77.1.2), the
// gateway running sluice (10.77.1.1 towards the bot, 10.77.2.1 towards the
// internet) with the rules `sluice firewall` writes, and an "internet" with
// the allowed exchange (10.77.2.2:443, its own CA), a forbidden upstream
// (10.77.2.3:443) and a DNS server (10.77.2.2:53). The gateway forwards
// packets, as a router would, so without the rules the bot's direct
// attempts succeed (SLUICE_ISOLATION_NO_RULES=1 shows this test failing).
// With them: the bot reaches the exchange through sluice as a proxy and
// transparently with sluice as its DNS, and nothing else gets out.
func TestIsolation(t *testing.T) {
	testenv.RequireRoot(t, "the isolation test (network namespaces, nft)")
	ipBin := testenv.RequireTool(t, "ip", "iproute2")
	nftBin := testenv.RequireTool(t, "nft", "nftables")
	n := testnetns.New(t, ipBin)
	n.Add("bot", "gw", "inet")
	n.Link("bot", "10.77.1.2/24", "gw", "10.77.1.1/24")
	n.Link("gw", "10.77.2.1/24", "inet", "10.77.2.2/24,10.77.2.3/24")
	n.Run("-n", n.Name("bot"), "route", "add", "default", "via", "10.77.1.1")
	n.Run("-n", n.Name("inet"), "route", "add", "10.77.1.0/24", "via", "10.77.2.1")
	if out, err := n.Exec("gw", "sysctl", "-w", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("ip_forward in the gateway: %v\n%s", err, out)
	}

	// The internet.
	exCA := testpki.NewCA(t, "exchange CA")
	var exchangeHits atomic.Int64
	exchange := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		exchangeHits.Add(1)
		io.WriteString(w, `{"serverTime":1}`)
	}))
	exchange.Listener.Close()
	exchange.Listener = n.Listen("inet", "tcp", "10.77.2.2:443")
	exchange.TLS = &tls.Config{Certificates: []tls.Certificate{exCA.Leaf(t, "api.binance.com")}}
	exchange.StartTLS()
	t.Cleanup(exchange.Close)
	forbidden := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "keys received") }))
	forbidden.Listener.Close()
	forbidden.Listener = n.Listen("inet", "tcp", "10.77.2.3:443")
	forbidden.TLS = &tls.Config{Certificates: []tls.Certificate{exCA.Leaf(t, "evil.test")}}
	forbidden.StartTLS()
	t.Cleanup(forbidden.Close)
	resolver := testdns.Serve(t, n.ListenPacket("inet", "udp", "10.77.2.2:53"), n.Listen("inet", "tcp", "10.77.2.2:53"))
	resolver.Set("api.binance.com", "10.77.2.2")
	resolver.Set("evil.test", "10.77.2.3")

	// The gateway.
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, `listen: {proxy: 10.77.1.1:3128, admin: 127.0.0.1:9090, transparent_tls: 10.77.1.1:443, dns: 10.77.1.1:53}
data_dir: %s
dns: {answer: [10.77.1.1], resolvers: [10.77.2.2:53]}
log: {level: warn}
hosts:
  api.binance.com: {profile: binance, upstream_ca: %s, allow_private: true}  # the internet here is 10.77.2.0/24
`, filepath.Join(dir, "data"), exCA.WritePEM(t, dir)), 0o644)
	var rules bytes.Buffer
	if err := app.Run(context.Background(), []string{"firewall", "-c", cfg, "--clients", "10.77.1.0/24"}, &rules, os.Stderr); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("SLUICE_ISOLATION_NO_RULES") != "1" {
		apply := n.Exec("gw", nftBin, "-f", "-")
		apply.Stdin = &rules
		if out, err := apply.CombinedOutput(); err != nil {
			t.Fatalf("nft -f in the gateway: %v\n%s", err, out)
		}
	}
	sluice := n.Exec("gw", os.Args[0], "run", "-c", cfg)
	sluice.Env = append(os.Environ(), "SLUICE_TEST_RUN_MAIN=1")
	sluice.Stderr = os.Stderr
	if err := sluice.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sluice.Process.Signal(os.Interrupt); sluice.Wait() })
	fromBot := n.Dialer("bot", 2*time.Second)
	testenv.WaitFor(t, 10*time.Second, "sluice listening in the gateway", func() bool {
		c, err := fromBot(context.Background(), "tcp", "10.77.1.1:3128")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	caPEM, err := os.ReadFile(filepath.Join(dir, "data", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	sluiceCA := x509.NewCertPool()
	sluiceCA.AppendCertsFromPEM(caPEM)

	// Through sluice, as a proxy.
	viaProxy := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "10.77.1.1:3128"}), DialContext: fromBot,
		TLSClientConfig: &tls.Config{RootCAs: sluiceCA},
	}}
	if body, err := get(viaProxy, "https://api.binance.com/api/v3/time"); err != nil || body != `{"serverTime":1}` {
		t.Errorf("the bot through sluice as its proxy: %v %q", err, body)
	}
	if _, err := get(viaProxy, "https://evil.test/"); err == nil || !strings.Contains(err.Error(), "host not listed") {
		t.Errorf("CONNECT evil.test through sluice: %v, want it refused", err)
	}

	// Through sluice, transparently, with sluice as the bot's DNS.
	answer, err := lookup(fromBot, "10.77.1.1:53", "api.binance.com")
	if err != nil || answer != "10.77.1.1" {
		t.Errorf("the bot asks sluice for api.binance.com: %q %v, want 10.77.1.1", answer, err)
	}
	if a, err := lookup(fromBot, "10.77.1.1:53", "evil.test"); err == nil {
		t.Errorf("sluice's DNS answered evil.test with %s", a)
	}
	transparent := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return fromBot(ctx, network, answer+":443")
		},
		TLSClientConfig: &tls.Config{RootCAs: sluiceCA},
	}}
	if body, err := get(transparent, "https://api.binance.com/api/v3/time"); err != nil || body != `{"serverTime":1}` {
		t.Errorf("the bot through sluice's transparent listener: %v %q", err, body)
	}
	if exchangeHits.Load() == 0 {
		t.Error("sluice never reached the exchange")
	}

	// Around sluice: every way must fail.
	for _, target := range []string{"10.77.2.2:443", "10.77.2.3:443", "10.77.2.2:53", "10.77.1.1:9090"} {
		if c, err := fromBot(context.Background(), "tcp", target); err == nil {
			c.Close()
			t.Errorf("the bot connected to %s directly", target)
		}
	}
	if a, err := lookup(fromBot, "10.77.2.2:53", "evil.test"); err == nil {
		t.Errorf("the bot asked the internet's resolver directly and got %s", a)
	}
}

func get(c *http.Client, u string) (string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// lookup asks server (over UDP, from the dialer's namespace) for name's A
// record and returns the first address.
func lookup(dial func(context.Context, string, string) (net.Conn, error), server, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := dial(ctx, "udp", server)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	conn := &dns.Conn{Conn: c}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if err := conn.WriteMsg(q); err != nil {
		return "", err
	}
	r, err := conn.ReadMsg()
	if err != nil {
		return "", err
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String(), nil
		}
	}
	return "", fmt.Errorf("no A record: %s", dns.RcodeToString[r.Rcode])
}
