package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sluice/internal/testdns"
	"sluice/internal/testenv"
	"sluice/internal/testexchange"
	"sluice/internal/testnetns"
	"sluice/internal/testpki"
)

// TestFiveMinuteStart runs the README's five-minute start exactly as
// written, in a shell on a machine of its own: a network namespace whose
// only "internet" is a namespace the test made, with api.binance.com (a
// test exchange, its CA among the machine's roots) and a DNS server, and a
// mount namespace for that machine's resolv.conf and roots. `sluice` is
// this test binary as main, as go install would put it on the PATH; HOME
// is new, so sluice starts as for a newcomer. Every command's output must
// show what its comment in the README says it shows; then the Python
// recipes of docs/guides/clients.md run as written and print the
// exchange's answer.
func TestFiveMinuteStart(t *testing.T) {
	testenv.RequireRoot(t, "the five-minute start (network and mount namespaces)")
	ipBin := testenv.RequireTool(t, "ip", "iproute2")
	unshare := testenv.RequireTool(t, "unshare", "util-linux")
	bash := testenv.RequireTool(t, "bash")
	testenv.RequireTool(t, "curl")

	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "\n## Five minutes")
	section, _, _ = strings.Cut(section, "\n## ")
	var lines []string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1) {
		for l := range strings.Lines(block[1]) {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	if len(lines) < 5 || lines[0] != "sluice run" {
		t.Fatalf("the README's five-minute start: %q; want sluice run first, then the client's commands", lines)
	}

	n := testnetns.New(t, ipBin)
	n.Add("host", "inet")
	n.Link("host", "11.1.1.2/24", "inet", "11.1.1.1/24")
	exCA := testpki.NewCA(t, "exchange CA")
	exchange := httptest.NewUnstartedServer(&testexchange.Binance{})
	exchange.Listener.Close()
	exchange.Listener = n.Listen("inet", "tcp", "11.1.1.1:443")
	exchange.TLS = &tls.Config{Certificates: []tls.Certificate{exCA.Leaf(t, "api.binance.com")}}
	exchange.StartTLS()
	t.Cleanup(exchange.Close)
	resolver := testdns.Serve(t, n.ListenPacket("inet", "udp", "11.1.1.1:53"), n.Listen("inet", "tcp", "11.1.1.1:53"))
	resolver.Set("api.binance.com", "11.1.1.1")
	resolver.Set("example.com", "11.1.1.1")

	dir := t.TempDir()
	roots, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Skipf("skipping: no system roots at /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates): %v", err)
	}
	os.WriteFile(filepath.Join(dir, "roots.crt"), append(roots, exCA.CertPEM...), 0o644)
	os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 11.1.1.1\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.MkdirAll(filepath.Join(dir, "home"), 0o700)
	os.WriteFile(filepath.Join(dir, "bin", "sluice"), fmt.Appendf(nil, "#!/bin/sh\nSLUICE_TEST_RUN_MAIN=1 exec %q \"$@\"\n", os.Args[0]), 0o755)

	// Then the Python recipes of docs/guides/clients.md, as written, in the
	// shell the five-minute start set up.
	guide, err := os.ReadFile(filepath.Join("..", "..", "docs", "guides", "clients.md"))
	if err != nil {
		t.Fatal(err)
	}
	recipes := regexp.MustCompile("(?s)```python\n(.*?)```").FindAllStringSubmatch(string(guide), -1)
	if len(recipes) < 2 {
		t.Fatalf("docs/guides/clients.md has %d Python recipes, want requests' and aiohttp's", len(recipes))
	}
	python := testenv.RequireTool(t, "/usr/bin/python3", "python3") // Debian's, with requests and aiohttp
	for i, r := range recipes {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("recipe%d.py", i)), []byte(r[1]), 0o644)
	}
	var script strings.Builder
	script.WriteString("mount --bind \"$T/resolv.conf\" /etc/resolv.conf\nmount --bind \"$T/roots.crt\" /etc/ssl/certs/ca-certificates.crt\ncd \"$T/home\"\n")
	script.WriteString(lines[0] + " >\"$T/sluice.log\" 2>&1 &\nSLUICE=$!\ntrap 'kill $SLUICE 2>/dev/null; wait $SLUICE' EXIT\n")
	script.WriteString("for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/3128) 2>/dev/null && break; sleep 0.05; done\n")
	for i, l := range lines[1:] {
		fmt.Fprintf(&script, "echo '@@@ %d'\n{ %s\n} 2>&1\necho \"@@@ rc $?\"\n", i+1, l)
	}
	for i := range recipes {
		fmt.Fprintf(&script, "echo '@@@ recipe %d'\n%s \"$T/recipe%d.py\" 2>&1\necho \"@@@ rc $?\"\n", i, python, i)
	}
	cmd := n.Exec("host", unshare, "--mount", "--propagation", "private", bash, "-c", script.String())
	// A newcomer's shell: nothing of this machine's proxy or CA settings.
	cmd.Env = []string{"PATH=" + filepath.Join(dir, "bin") + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + filepath.Join(dir, "home"), "T=" + dir, "LANG=C"}
	ctx, cancel := context.WithTimeout(context.Background(), 60*1e9)
	defer cancel()
	go func() { <-ctx.Done(); cmd.Process.Kill() }()
	out, err := cmd.CombinedOutput()
	log, _ := os.ReadFile(filepath.Join(dir, "sluice.log"))
	if err != nil {
		t.Fatalf("the five-minute start: %v\n%s\nsluice's log:\n%s", err, out, log)
	}
	outputs := strings.Split(string(out), "@@@ ")
	comment := regexp.MustCompile(`\s# (.+)$`)
	for i, l := range lines[1:] {
		var got string
		for _, o := range outputs {
			if rest, ok := strings.CutPrefix(o, fmt.Sprintf("%d\n", i+1)); ok {
				got = rest
			}
		}
		if m := comment.FindStringSubmatch(l); m != nil {
			if !strings.Contains(strings.ToLower(got), strings.ToLower(m[1])) {
				t.Errorf("README: %s\nprinted %q, not what the comment says", l, got)
			}
		}
	}
	for i := range recipes {
		var got string
		for _, o := range outputs {
			if rest, ok := strings.CutPrefix(o, fmt.Sprintf("recipe %d\n", i)); ok {
				got = rest
			}
		}
		if !strings.Contains(got, `{"serverTime":`) {
			t.Errorf("the Python recipe %d of docs/guides/clients.md printed %q, want the exchange's time", i+1, got)
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("the shell's output:\n%s\nsluice's log:\n%s", out, log)
	}
	if got := strings.Count(string(out), "@@@ rc "); got != len(lines)-1+len(recipes) {
		t.Errorf("%d of the %d commands ran", got, len(lines)-1+len(recipes))
	}
}
