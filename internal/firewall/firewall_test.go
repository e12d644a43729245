package firewall

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"sluice/internal/route"
	"sluice/internal/testenv"
	"sluice/internal/testnetns"
)

const gatewayConfig = `
listen: {proxy: 10.77.1.1:3128, admin: 127.0.0.1:9090, transparent_tls: 10.77.1.1:443, transparent_http: 10.77.1.1:80, dns: 10.77.1.1:53}
data_dir: /var/lib/sluice
dns: {answer: [10.77.1.1], resolvers: [10.77.2.2, "tls://dns.quad9.net"]}
hosts:
  api.binance.com: {profile: binance}
  deb.debian.org: {plain_http: true}
  git.internal.test: {ports: [8443], connect_to: "10.0.0.5:9443", allow_private: true}
  blocked.test: {mode: deny, ports: [25]}
`

func spec(t *testing.T, s Spec) Spec {
	t.Helper()
	table, err := route.Parse([]byte(gatewayConfig), "gw.yaml", t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.FromTable(table); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRules: clients reach the proxy, transparent and DNS listeners (not
// the admin one); sluice goes out to its hosts' ports (443, 80, 8443, the
// connect_to 9443, not the denied host's 25), its resolvers and NTP; nft
// accepts the rules, and the iptables script, applied twice in a
// namespace, leaves one copy of each rule.
func TestRules(t *testing.T) {
	s := spec(t, Spec{})
	s.Clients = nil
	if _, err := NFT(s, "test"); err == nil || !strings.Contains(err.Error(), "--clients") {
		t.Errorf("no clients: %v, want an error naming --clients", err)
	}
	uid := 998
	s = spec(t, Spec{UID: &uid})
	s.Clients = append(s.Clients, mustPrefix(t, "10.77.1.0/24"), mustPrefix(t, "fd77::/64"))
	nft, err := NFT(s, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"tcp dport { 53, 80, 443, 3128 } accept", "udp dport { 53 } accept",
		"elements = { 10.77.1.0/24 }", "elements = { fd77::/64 }",
		"ip saddr @clients4 counter drop", "meta skuid 998 jump sluice_out",
		"tcp dport { 80, 443, 8443, 9443 } accept",
		"ip daddr 10.77.2.2 udp dport 53 accept", "tcp dport 853 accept",
	} {
		if !strings.Contains(nft, want) {
			t.Errorf("nft rules lack %q:\n%s", want, nft)
		}
	}
	if strings.Contains(nft, "9090") || strings.Contains(nft, " 25 ") || strings.Contains(nft, "flush ruleset") {
		t.Errorf("nft rules open the admin port, the denied host's port, or flush others' tables:\n%s", nft)
	}
	ipt, err := IPTables(Spec{Clients: s.Clients[:1], ClientTCP: s.ClientTCP, ClientUDP: s.ClientUDP, UpstreamTCP: s.UpstreamTCP, Resolvers: s.Resolvers, Docker: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ipt, "hook DOCKER-USER -s 10.77.1.0/24 -j DROP") {
		t.Errorf("iptables --docker: no DOCKER-USER rule:\n%s", ipt)
	}
	if _, err := IPTables(s, "test"); err == nil {
		t.Error("iptables rules for an IPv6 client network were written")
	}

	testenv.RequireRoot(t, "checking rules with nft and iptables")
	nftBin := testenv.RequireTool(t, "nft", "nftables")
	cmd := exec.Command(nftBin, "-c", "-f", "-")
	cmd.Stdin = strings.NewReader(nft)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("nft -c refuses the rules: %v\n%s\n%s", err, out, nft)
	}
	testenv.RequireTool(t, "iptables")
	ipBin := testenv.RequireTool(t, "ip", "iproute2")
	ipt, _ = IPTables(Spec{Clients: s.Clients[:1], ClientTCP: s.ClientTCP, ClientUDP: s.ClientUDP, UpstreamTCP: s.UpstreamTCP, Resolvers: s.Resolvers}, "test")
	// Applied in a namespace of its own, twice: the second time changes nothing.
	n := testnetns.New(t, ipBin)
	n.Add("gw")
	var dumps []string
	for i := range 2 {
		apply := n.Exec("gw", "sh", "-c", ipt)
		if out, err := apply.CombinedOutput(); err != nil {
			t.Fatalf("applying the iptables script (time %d): %v\n%s\n%s", i+1, err, out, ipt)
		}
		out, err := n.Exec("gw", "iptables", "-S").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables -S: %v\n%s", err, out)
		}
		dumps = append(dumps, string(out))
	}
	if dumps[0] != dumps[1] {
		t.Errorf("applying the script again changed the rules:\nfirst\n%s\nagain\n%s", dumps[0], dumps[1])
	}
	for _, want := range []string{"-A INPUT -s 10.77.1.0/24 -j SLUICE-CLIENTS", "-A FORWARD -s 10.77.1.0/24 -j DROP", "-A OUTPUT ! -o lo -j SLUICE-OUT", "-A SLUICE-OUT -p udp -m udp --dport 123 -j ACCEPT"} {
		if strings.Count(dumps[1], want+"\n") != 1 {
			t.Errorf("iptables -S has %q %d times, want once:\n%s", want, strings.Count(dumps[1], want+"\n"), dumps[1])
		}
	}
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
