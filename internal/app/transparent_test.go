package app

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"sluice/internal/testenv"
)

// TestTransparentWithDNS is a bot that cannot be told about a proxy: dig
// asks sluice's DNS server, which answers allowed names with sluice's
// address and refuses the rest; curl, resolving the name to sluice, talks
// TLS to the transparent listener and gets the fake exchange's answer
// through the binance profile; a reload that adds a host changes the
// answers at once.
func TestTransparentWithDNS(t *testing.T) {
	dig := testenv.RequireTool(t, "dig", "bind9-dnsutils")
	curl := testenv.RequireTool(t, "curl")
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"serverTime":1}`)
	}), "api.binance.com", "api.kraken.com")
	lines := strings.SplitAfter(hosts, "\n")
	cfg := func(hosts string) string {
		return "listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0, transparent_tls: 127.0.0.1:0, dns: 127.0.0.1:0}\n" +
			"dns: {answer: [127.0.0.1], pin: \"off\"}\ndata_dir: data\ntimeouts: {shutdown: 5s}\nhosts:\n" +
			strings.ReplaceAll(hosts, "allow_private: true}", "allow_private: true, profile: binance}")
	}
	r := startRun(t, cfg(lines[0]))
	dnsAddr := r.addrs["dns"]
	dnsHost, dnsPort := splitAddr(t, dnsAddr)
	ask := func(name string) string {
		out, err := exec.Command(dig, "@"+dnsHost, "-p", dnsPort, "+tries=1", "+time=2", name, "A").CombinedOutput()
		if err != nil {
			t.Fatalf("dig %s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	if out := ask("api.binance.com"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "api.binance.com.\t30\tIN\tA\t127.0.0.1") {
		t.Errorf("dig api.binance.com:\n%s", out)
	}
	if out := ask("api.kraken.com"); !strings.Contains(out, "status: REFUSED") {
		t.Errorf("dig api.kraken.com (not listed yet):\n%s", out)
	}

	_, tlsPort := splitAddr(t, r.addrs["transparent_tls"])
	ca := filepath.Join(r.dir, "data", "ca.pem")
	out, err := exec.Command(curl, "-sS", "--cacert", ca, "--connect-to", "api.binance.com:443:127.0.0.1:"+tlsPort,
		"https://api.binance.com/api/v3/time").CombinedOutput()
	if err != nil || string(out) != `{"serverTime":1}` {
		t.Errorf("curl through the transparent listener: %v\n%s", err, out)
	}

	os.WriteFile(r.cfg, []byte(cfg(hosts)), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	r.waitLog("config reloaded")
	if out := ask("api.kraken.com"); !strings.Contains(out, "status: NOERROR") {
		t.Errorf("dig api.kraken.com after the reload that lists it:\n%s", out)
	}
}

func splitAddr(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("address %q has no port", addr)
	}
	return addr[:i], addr[i+1:]
}
