package app

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sluice/internal/config"
	"sluice/internal/route"
)

// initTo runs sluice init with args, writing to a new file, and returns
// the file's text, the compiled config and what init said on stderr.
func initTo(t *testing.T, args ...string) (string, *route.Table, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "sluice.yaml")
	var stderr bytes.Buffer
	if err := Run(context.Background(), append([]string{"init", "-o", out}, args...), io.Discard, &stderr); err != nil {
		t.Fatalf("sluice init %v: %v", args, err)
	}
	text := readFile(t, out)
	table, err := route.Load(out, nil)
	if err != nil {
		t.Fatalf("the config sluice init %v wrote does not load: %v\n%s", args, err, text)
	}
	return text, table, stderr.String()
}

// TestInitDefault: the starter lists the embedded default's hosts with
// their profiles and ports, loads as written, and is never written over
// an existing file.
func TestInitDefault(t *testing.T) {
	text, table, _ := initTo(t)
	for _, e := range config.DefaultEntries() {
		h := table.Config.Hosts[e.Pattern]
		if h == nil || h.Profile != e.Profile {
			t.Errorf("starter entry %s: %+v, want profile %q", e.Pattern, h, e.Profile)
		}
	}
	if h := table.Config.Hosts["stream.binance.com"]; h == nil || len(h.Ports) != 2 {
		t.Errorf("stream.binance.com in the starter: %+v, want ports 9443 and 443", h)
	}
	if table.Config.Listen.Proxy != "127.0.0.1:3128" || !strings.Contains(text, "# data_dir:") {
		t.Errorf("starter listens on %q; data_dir must stay commented (the CA clients trust stays):\n%s", table.Config.Listen.Proxy, text)
	}
	existing := filepath.Join(t.TempDir(), "sluice.yaml")
	os.WriteFile(existing, []byte("mine"), 0o644)
	if err := Run(context.Background(), []string{"init", "-o", existing}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("sluice init over an existing file: %v", err)
	}
	if got := readFile(t, existing); got != "mine" {
		t.Errorf("sluice init changed an existing file: %q", got)
	}
}

// TestInitFromAPIList reads an api-list as FreqCache's 5_ca/api-list is
// kept (one host a line), with what hand editing adds: CRLF line ends,
// comments, upper case, repeats.
func TestInitFromAPIList(t *testing.T) {
	list := filepath.Join(t.TempDir(), "api-list")
	os.WriteFile(list, []byte("# exchanges the bots use\r\napi.binance.com\r\nAPI.Kraken.com\r\n\r\ngithub.com   # strategies\r\napi.binance.com\r\nwww.npmjs.org\r\n"), 0o644)
	text, table, said := initTo(t, "--from-api-list", list)
	want := map[string]string{"api.binance.com": "binance", "api.kraken.com": "kraken", "github.com": "", "www.npmjs.org": ""}
	if len(table.Config.Hosts) != len(want) {
		t.Errorf("hosts %d, want %d:\n%s", len(table.Config.Hosts), len(want), text)
	}
	for name, profile := range want {
		if h := table.Config.Hosts[name]; h == nil || h.Profile != profile {
			t.Errorf("%s: %+v, want profile %q", name, h, profile)
		}
	}
	for _, s := range []string{"4 hosts; 2 with a profile", "api.binance.com (binance)", "api.kraken.com (kraken)", "2 without one", "github.com, www.npmjs.org"} {
		if !strings.Contains(said, s) {
			t.Errorf("init's report lacks %q:\n%s", s, said)
		}
	}
	if !strings.Contains(text, "github.com:") || !strings.Contains(text, "no profile") {
		t.Errorf("the starter does not mark github.com as without a profile:\n%s", text)
	}

	bad := filepath.Join(t.TempDir(), "api-list")
	os.WriteFile(bad, []byte("api.binance.com\nhttps://api.kraken.com/0/public\n"), 0o644)
	err := Run(context.Background(), []string{"init", "--from-api-list", bad}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), bad+":2:") {
		t.Errorf("an api-list with a URL on line 2: %v, want an error at %s:2", err, bad)
	}
}

// TestInitTransparent: with --transparent the starter has the DNS and
// transparent listeners (port 9443 too, for the stream hosts), answers
// with the address given, and names the firewall command for its network.
func TestInitTransparent(t *testing.T) {
	text, table, _ := initTo(t, "--transparent", "--address", "127.0.0.1")
	l := table.Config.Listen
	if l.DNS != "127.0.0.1:53" || len(l.TransparentTLS) != 2 || l.TransparentTLS[1] != "127.0.0.1:9443" || l.TransparentHTTP != "127.0.0.1:80" {
		t.Errorf("transparent listeners: dns %q, tls %v, http %q", l.DNS, l.TransparentTLS, l.TransparentHTTP)
	}
	if got := table.Config.DNS.Answer; len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("dns.answer %v, want [127.0.0.1]", got)
	}
	if !strings.Contains(text, "--clients 127.0.0.0/8 | nft -f -") {
		t.Errorf("no firewall line for the address's network:\n%s", text)
	}
	if err := Run(context.Background(), []string{"init", "--transparent", "--address", "192.0.2.300"}, io.Discard, io.Discard); err == nil {
		t.Error("an address that is not one accepted")
	}
}
