package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"sluice/internal/testdns"
	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// TestTransparentWithDNS is a bot that cannot be told about a proxy: dig
// asks sluice's DNS server, which answers allowed names with sluice's
// address and refuses the rest without asking any resolver; curl, with
// the name resolved to sluice (--resolve), talks TLS on port 443 to the
// transparent listener and gets the fake exchange's answer through the
// binance profile; a reload that adds a host changes the answers at once.
func TestTransparentWithDNS(t *testing.T) {
	dig := testenv.RequireTool(t, "dig", "bind9-dnsutils")
	curl := testenv.RequireTool(t, "curl")
	front := transparentAddress(t)
	resolver := testdns.Start(t) // sluice's own resolver: must hear nothing of what clients ask
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"serverTime":1}`)
	}), "api.binance.com", "api.kraken.com")
	lines := strings.SplitAfter(hosts, "\n")
	cfg := func(hosts string) string {
		// Two transparent listeners, as Binance's streams need 9443 too.
		return fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0, transparent_tls: [%q, %q], dns: 127.0.0.1:0}\n", front, strings.TrimSuffix(front, ":443")+":9443") +
			fmt.Sprintf("dns: {answer: [%s], resolvers: [%s]}\ndata_dir: data\ntimeouts: {shutdown: 5s}\nhosts:\n", strings.TrimSuffix(front, ":443"), resolver.Addr) +
			strings.ReplaceAll(hosts, "allow_private: true}", "allow_private: true, profile: binance, ports: [443, 9443]}")
	}
	r := startRun(t, cfg(lines[0]))
	dnsHost, dnsPort := splitAddr(t, r.addrs["dns"])
	ask := func(name string) string {
		out, err := exec.Command(dig, "@"+dnsHost, "-p", dnsPort, "+tries=1", "+time=2", name, "A").CombinedOutput()
		if err != nil {
			t.Fatalf("dig %s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	frontIP := strings.TrimSuffix(front, ":443")
	if out := ask("api.binance.com"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "api.binance.com.\t30\tIN\tA\t"+frontIP) {
		t.Errorf("dig api.binance.com:\n%s", out)
	}
	for _, name := range []string{"api.kraken.com", "evil.test"} {
		if out := ask(name); !strings.Contains(out, "status: REFUSED") {
			t.Errorf("dig %s (not listed):\n%s", name, out)
		}
		if n := resolver.Queries(name); n != 0 {
			t.Errorf("a refused name, %s, reached sluice's resolver %d times", name, n)
		}
	}

	ca := filepath.Join(r.dir, "data", "ca.pem")
	out, err := exec.Command(curl, "-sS", "--cacert", ca, "--resolve", "api.binance.com:443:"+frontIP,
		"https://api.binance.com/api/v3/time").CombinedOutput()
	if err != nil || string(out) != `{"serverTime":1}` {
		t.Errorf("curl --resolve api.binance.com:443:%s: %v\n%s", frontIP, err, out)
	}

	out, err = exec.Command(curl, "-sS", "--cacert", ca, "--resolve", "api.binance.com:9443:"+frontIP,
		"https://api.binance.com:9443/api/v3/time").CombinedOutput()
	if err != nil || string(out) != `{"serverTime":1}` {
		t.Errorf("curl to the second transparent listener, api.binance.com:9443: %v\n%s", err, out)
	}

	os.WriteFile(r.cfg, []byte(cfg(hosts)), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	r.waitLog("config reloaded")
	if out := ask("api.kraken.com"); !strings.Contains(out, "status: NOERROR") {
		t.Errorf("dig api.kraken.com after the reload that lists it:\n%s", out)
	}
}

// transparentAddress returns a loopback address of this test's own on
// port 443, where a client sent by DNS connects (binding it needs root).
func transparentAddress(t *testing.T) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.%d.%d:443", 100+os.Getpid()%100, 2+os.Getpid()%250)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if os.Getenv("SLUICE_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("listening on %s (port 443 needs root or CAP_NET_BIND_SERVICE): %v", addr, err)
		}
		t.Skipf("skipping: cannot listen on %s (port 443 needs root or CAP_NET_BIND_SERVICE): %v", addr, err)
	}
	ln.Close()
	return addr
}

func splitAddr(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("address %q has no port", addr)
	}
	return addr[:i], addr[i+1:]
}

// TestPinnedResolution: sluice resolves upstream names with dns.resolvers
// (a resolver on loopback that counts questions) and pins the first good
// answer in the data dir. After a restart the resolver's answer changes:
// the recheck at start reports it, the connection still goes to the pinned
// address, and only `sluice dns accept` moves the pin. A name the policy
// refuses is never resolved; an answer that points at loopback for a host
// that does not allow private addresses (rebinding) is refused, not pinned.
func TestPinnedResolution(t *testing.T) {
	resolver := testdns.Start(t)
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pinned") }), "api.test")
	_, port := splitAddr(t, up.Listener.Addr().String())
	caPath := upCA.WritePEM(t, t.TempDir())
	resolver.Set("api.test", "127.0.0.1")
	resolver.Set("rebind.test", "127.0.0.1")
	cfg := fmt.Sprintf(`listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}
data_dir: data
timeouts: {shutdown: 5s}
dns: {resolvers: [%s], pin: first}
hosts:
  api.test: {ports: [%s], upstream_ca: %s, allow_private: true}
  rebind.test: {ports: [%s], upstream_ca: %s}
`, resolver.Addr, port, caPath, port, caPath)
	dir := t.TempDir()
	r := startRunIn(t, dir, cfg, "")
	c := r.client()
	target := "https://api.test:" + port + "/"
	if got := status(t, c, target); got != 200 {
		t.Fatalf("api.test through sluice: %d", got)
	}
	if got := status(t, c, "https://rebind.test:"+port+"/"); got != http.StatusForbidden {
		t.Errorf("rebind.test resolving to loopback: %d, want the private-address guard's 403", got)
	}
	if _, err := c.Get("https://evil.test/"); err == nil {
		t.Error("evil.test allowed")
	}
	if n := resolver.Queries("evil.test"); n != 0 {
		t.Errorf("a refused name was resolved %d times", n)
	}
	c.CloseIdleConnections()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatal(err)
	}
	r.done <- nil // for the cleanup
	pins := readFileIfAny(filepath.Join(dir, "data", "dns-pins.json"))
	if !strings.Contains(pins, `"host": "api.test"`) || strings.Contains(pins, "rebind.test") {
		t.Fatalf("dns-pins.json after the first run:\n%s", pins)
	}

	resolver.Set("api.test", "127.0.0.2") // a hijacked record: nothing of sluice's listens there
	r = startRunIn(t, dir, cfg, "")
	r.waitLog("dns answer disagrees with the pin")
	c = r.client()
	if got := status(t, c, target); got != 200 {
		t.Errorf("api.test after its record changed: %d; the pin must hold", got)
	}
	cli := filepath.Join(dir, "cli.yaml")
	os.WriteFile(cli, []byte(strings.Replace(cfg, "admin: 127.0.0.1:0", "admin: "+r.addrs["admin"], 1)), 0o644)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"dns", "pins", "-c", cli}, &out, io.Discard); err != nil ||
		!regexp.MustCompile(`api\.test\s+127\.0\.0\.1\s+\S+\s+127\.0\.0\.2`).MatchString(out.String()) {
		t.Errorf("sluice dns pins: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := Run(context.Background(), []string{"dns", "accept", "api.test", "-c", cli}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "127.0.0.2") {
		t.Errorf("sluice dns accept api.test: %v\n%s", err, out.String())
	}
	if err := Run(context.Background(), []string{"dns", "accept", "api.test", "-c", cli}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "nothing to accept") {
		t.Errorf("a second accept: %v, want nothing to accept", err)
	}
}
