package config

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"sluice/internal/testpki"
)

// Load and Default read a file or the embedded default as route.Load
// does, for the structural checks tested here.
func Load(path string) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	return Parse(data, path, dir)
}

func Default() (*Config, error) { return Parse(DefaultYAML(), "(embedded default)", ".") }

func TestDefaultIsValid(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatalf("Default(): %v", err)
	}
	if c.Listen.Proxy != "127.0.0.1:3128" || c.Listen.Admin != "127.0.0.1:9090" || c.DataDir == "" {
		t.Errorf("Default() listen %+v data_dir %q, want proxy 127.0.0.1:3128, admin 127.0.0.1:9090 and a data dir", c.Listen, c.DataDir)
	}
	if h := c.Hosts["api.binance.com"]; h == nil || h.Mode != ModeIntercept || !slices.Equal(h.Ports, []uint16{443}) {
		t.Errorf("Default() api.binance.com = %+v, want intercepted on 443", h)
	}
	if c.Timeouts.Dial.D() != 10*time.Second || c.CA.LeafValidity.D() != 7*24*time.Hour {
		t.Errorf("defaults not filled: %+v %+v", c.Timeouts, c.CA)
	}
}

// TestIssueExample loads the config shape users are told to write.
func TestIssueExample(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("testdata/issue-example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(path, data, 0o644)
	os.WriteFile(filepath.Join(dir, "test-ca.pem"), testpki.NewCA(t, "test").CertPEM, 0o644)
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := c.Hosts["github.com"].Mode; got != ModeTunnel {
		t.Errorf("github.com mode = %q, want tunnel", got)
	}
	in := c.Hosts["api.internal.test"]
	if in.Mode != ModeIntercept || !in.AllowPrivate || in.ConnectTo != "127.0.0.1:8443" {
		t.Errorf("api.internal.test = %+v", in)
	}
	if got, want := c.Path(c.DataDir), filepath.Join(dir, "sluice-data"); got != want {
		t.Errorf("data dir resolves to %q, want %q (relative to the config file)", got, want)
	}
}

func TestHostsFile(t *testing.T) {
	_, err := Load("testdata/good-hostsfile.yaml")
	if err == nil || !strings.Contains(err.Error(), "hosts.txt:6:") || !strings.Contains(err.Error(), "not a host!") {
		t.Fatalf("Load with a bad line 6 in hosts.txt: err = %v, want it named with file and line", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hosts.txt"), []byte("# list\napi.binance.com\nFAPI.binance.com.  # futures\n*.myshopify.com\n\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "c.yaml"), []byte("hosts_file: hosts.txt\nhosts:\n  api.binance.com: {mode: tunnel}\n"), 0o644)
	c, err := Load(filepath.Join(dir, "c.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]Mode{"api.binance.com": ModeTunnel, "fapi.binance.com": ModeIntercept, "*.myshopify.com": ModeIntercept} {
		if h := c.Hosts[host]; h == nil || h.Mode != want {
			t.Errorf("hosts[%q] = %+v, want mode %s", host, h, want)
		}
	}
}

func TestPlainHTTPAddsPort80(t *testing.T) {
	c, err := Parse([]byte("hosts:\n  deb.debian.org: {plain_http: true}\n  a.test:\n"), "t.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Hosts["deb.debian.org"].Ports; !slices.Equal(got, []uint16{443, 80}) {
		t.Errorf("plain_http entry ports = %v, want [443 80]", got)
	}
	if got := c.Hosts["a.test"]; got == nil || got.Mode != ModeIntercept {
		t.Errorf("entry without a value = %+v, want the defaults", got)
	}
}

// TestMarshalRoundTrip checks that what `sluice check` prints loads back
// to the same config.
func TestMarshalRoundTrip(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
}

func roundTrip(t *testing.T, c *Config) {
	t.Helper()
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out, "printed", c.Dir)
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, out)
	}
	out2, _ := again.Marshal()
	if !bytes.Equal(out, out2) {
		t.Errorf("printed config changed on reload:\n%s\nthen:\n%s", out, out2)
	}
}

// FuzzParse: any input either fails with an error or loads into a config
// that prints and reloads unchanged. Never a panic.
func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	for _, p := range []string{"testdata/issue-example.yaml", "testdata/bad-many.yaml", "testdata/bad-mode.yaml"} {
		data, _ := os.ReadFile(p)
		f.Add(data)
	}
	f.Add([]byte("hosts:\n  a.test: {mode: tunnel, ports: [8443]}\ntimeouts: {dial: 1s}\n"))
	f.Add([]byte("hosts: [1, 2]\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml", dir)
		if err != nil {
			return
		}
		roundTrip(t, c)
	})
}

// TestProfiles: every embedded profile parses strictly, its rules validate,
// and the default config's profiles exist.
func TestProfiles(t *testing.T) {
	ps, err := Profiles()
	if err != nil {
		t.Fatalf("Profiles(): %v", err)
	}
	for _, name := range []string{"binance", "bybit", "shopify"} {
		if ps[name] == nil {
			t.Errorf("profile %q missing", name)
		}
	}
}

func TestMarshalRedacted(t *testing.T) {
	c, err := Parse([]byte("hosts:\n  a.test: {}\n"), "t.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var n yaml.Node
	n.Encode(map[string]any{"redis": map[string]string{"password": "hunter2", "addr": "x"}, "api_token": "t0k"})
	redact(&n)
	out, _ := yaml.Marshal(&n)
	if strings.Contains(string(out), "hunter2") || strings.Contains(string(out), "t0k") || !strings.Contains(string(out), "addr: x") {
		t.Errorf("redacted:\n%s", out)
	}
	if out, err := c.MarshalRedacted(); err != nil || !strings.Contains(string(out), "a.test") {
		t.Errorf("MarshalRedacted: %v\n%s", err, out)
	}
	c, err = Parse([]byte("fleet: {redis: \"rediss://sluice:s3cret@redis.internal:6380/2\"}\nhosts:\n  a.test: {}\n"), "t.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := c.MarshalRedacted(); strings.Contains(string(out), "s3cret") || !strings.Contains(string(out), "rediss://sluice:REDACTED@redis.internal:6380/2") {
		t.Errorf("fleet.redis's password not redacted:\n%s", out)
	}
}

// TestDataDirDefault: without data_dir, sluice keeps its state under
// $XDG_DATA_HOME, else $HOME/.local/share, else $STATE_DIRECTORY; with
// none of them set it refuses and names data_dir, and never creates a
// directory named "~".
func TestDataDirDefault(t *testing.T) {
	for _, tt := range []struct {
		name, xdg, home, state, doc, want, wantErr string
	}{
		{"XDG first", "/xdg", "/home/bot", "/var/lib/sluice", "hosts: {}\n", "/xdg/sluice", ""},
		{"then HOME", "", "/home/bot", "/var/lib/sluice", "hosts: {}\n", "/home/bot/.local/share/sluice", ""},
		{"then systemd's StateDirectory", "", "", "/var/lib/sluice:/var/lib/other", "hosts: {}\n", "/var/lib/sluice", ""},
		{"none of them", "", "", "", "hosts: {}\n", "", "data_dir: no default"},
		{"~/ without HOME", "", "", "/var/lib/sluice", "data_dir: ~/state\nhosts: {}\n", "", "data_dir: \"~/state\" starts with ~/ but HOME is not set"},
		{"a relative XDG_DATA_HOME is ignored", "rel", "/home/bot", "", "hosts: {}\n", "/home/bot/.local/share/sluice", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("XDG_DATA_HOME", tt.xdg)
			t.Setenv("HOME", tt.home)
			t.Setenv("STATE_DIRECTORY", tt.state)
			c, err := Parse([]byte(tt.doc), "test.yaml", t.TempDir())
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.wantErr == "" && c.DataDir != tt.want:
				t.Errorf("data_dir %q, want %q", c.DataDir, tt.want)
			}
		})
	}
}

// TestHostsFileKeepsProfiles: a plain host list (the old stack's api-list)
// gives each listed host the profile the embedded default gives it, so it
// keeps its cache rules, budget and withdrawal guard; an entry in hosts
// still says what it says.
func TestHostsFileKeepsProfiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api-list"), []byte("api.binance.com\nfapi.binance.com\nacme.myshopify.com\napi.example.org\napi.bybit.com\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "c.yaml"), []byte("hosts_file: api-list\nhosts:\n  api.bybit.com: {mode: tunnel}\n"), 0o644)
	c, err := Load(filepath.Join(dir, "c.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{"api.binance.com": "binance", "fapi.binance.com": "binance", "acme.myshopify.com": "shopify", "api.example.org": "", "api.bybit.com": ""} {
		if h := c.Hosts[host]; h == nil || h.Profile != want {
			t.Errorf("hosts[%q] = %+v, want profile %q", host, h, want)
		}
	}
}

// TestHostEntryKeepsProfile: an entry written for one setting (connect_to)
// of a host the embedded default knows keeps that host's profile, unless
// it names another or none; a tunnel's plain_http, which can never take
// effect, is an error.
func TestHostEntryKeepsProfile(t *testing.T) {
	c, err := Parse([]byte(`hosts:
  api.binance.com: {connect_to: "127.0.0.1:9443", allow_private: true}
  fapi.binance.com: {profile: none}
  api.bybit.com: {profile: bybit}
  acme.myshopify.com:
  api.kraken.com: {mode: tunnel}
  api.example.org: {}
`), "c.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]struct {
		profile string
		from    ProfileSource
	}{
		"api.binance.com":    {"binance", ProfileFromDefault},
		"fapi.binance.com":   {"none", ProfileDropped},
		"api.bybit.com":      {"bybit", ProfileFromEntry},
		"acme.myshopify.com": {"shopify", ProfileFromDefault},
		"api.kraken.com":     {"", ProfileUnknown},
		"api.example.org":    {"", ProfileUnknown},
	} {
		if h := c.Hosts[host]; h.Profile != want.profile || h.ProfileFrom != want.from {
			t.Errorf("hosts[%q]: profile %q from %v, want %q from %v", host, h.Profile, h.ProfileFrom, want.profile, want.from)
		}
	}
	_, err = Parse([]byte("hosts:\n  git.test: {mode: tunnel, plain_http: true}\n"), "t.yaml", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "t.yaml:2:") || !strings.Contains(err.Error(), "plain_http") {
		t.Errorf("a tunnel with plain_http: %v, want an error at t.yaml:2 naming plain_http", err)
	}
}

// TestTypeErrorsInWords: a value of the wrong shape is reported with its
// key path and the shape expected, in words; hosts written as a list gets
// the hint to use hosts_file; a misspelt key gets the known key nearest it.
func TestTypeErrorsInWords(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{"hosts:\n  - api.binance.com\n", `t.yaml:2: hosts: expected a map of host entries (api.example.com: {profile: ...}), got a list; for a plain list of hosts, put them in a file and set hosts_file: FILE`},
		{"hosts:\n  a.test:\n    ports: \"443\"\n", "t.yaml:3: hosts.\"a.test\".ports: expected a list of ports (e.g. [443, 8443]), got a text value `443`"},
		{"hosts:\n  a.test: {plain_http: maybe}\n", "t.yaml:2: hosts.\"a.test\".plain_http: expected true or false, got a text value `maybe`"},
		{"hosts:\n  a.test: {upstrem_ca: ca.pem}\n", `t.yaml:2: unknown key "upstrem_ca" (did you mean "upstream_ca"?)`},
		{"listen: {proxyy: 127.0.0.1:3128}\nhosts: {}\n", `t.yaml:1: unknown key "proxyy" (did you mean "proxy"?)`},
		{"hosts: {}\nzzz: 1\n", `t.yaml:2: unknown key "zzz"`},
		{"hosts:\n  a.test: {}\nclients:\n  bot: {hosts: [a.test]}\n", `t.yaml:4: clients.bot: give password_file, addresses or certificate: true`},
		{"hosts:\n  a.test: {}\nclients:\n  bot:\n    addresses: [10.0.0.5]\n    hosts: [a.test]\n    grants: [read, wire]\n", `t.yaml:7: clients.bot.grants: "wire" is no endpoint group`},
		{"hosts:\n  a.test: {}\nclients:\n  bot:\n    addresses: [10.0.0.5]\n    hosts: [a.test]\n    keys: {a.test: nope}\n", `t.yaml:7: clients.bot.keys."a.test": no key "nope" under keys`},
		{"hosts: {}\nkeys:\n  k: {exchange: ftx, key_env: K, secret_env: S}\n", `t.yaml:3: keys.k.exchange: "ftx": sluice signs for [binance bybit kraken]`},
		{"hosts: {}\nfleet: {cache: true}\n", `t.yaml:2: fleet.cache: needs fleet.redis: the fleet cache is kept in Redis`},
		{"hosts: {}\nfleet: {redis: \"redis://r:6379\", cache: true, cache_max_bytes: 1KiB}\n", `fleet.cache_max_bytes: must hold at least one object of cache.max_object_bytes`},
	} {
		_, err := Parse([]byte(tt.doc), "t.yaml", t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q):\n%v\nwant a line\n%s", tt.doc, err, tt.want)
		}
	}
}

// TestParsePrefix: an IP is its own one-address network, a CIDR is masked,
// an IPv4-mapped IPv6 form is the IPv4 it maps, and anything else is an
// error naming it.
func TestParsePrefix(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"192.0.2.7", "192.0.2.7/32"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:db8::1/64", "2001:db8::/64"},
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
	} {
		if p, err := ParsePrefix(tt.in); err != nil || p.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
		}
	}
	if _, err := ParsePrefix("10.0.0.0/33"); err == nil || !strings.Contains(err.Error(), `"10.0.0.0/33"`) {
		t.Errorf("ParsePrefix of a bad CIDR: %v, want an error naming it", err)
	}
}

// TestClientNetwork: IPv4 clients count alone, IPv6 ones by their
// bans.ipv6_prefix network, and a mapped address as the IPv4 it maps.
func TestClientNetwork(t *testing.T) {
	for _, tt := range []struct {
		addr string
		v6   int
		want string
	}{
		{"192.0.2.7", 64, "192.0.2.7/32"},
		{"::ffff:192.0.2.7", 64, "192.0.2.7/32"},
		{"2001:db8::1:2", 64, "2001:db8::/64"},
		{"2001:db8::1:2", 128, "2001:db8::1:2/128"},
		{"2001:db8::1:2", 0, "2001:db8::1:2/128"},
	} {
		if got := ClientNetwork(netip.MustParseAddr(tt.addr), tt.v6); got.String() != tt.want {
			t.Errorf("ClientNetwork(%s, %d) = %s, want %s", tt.addr, tt.v6, got, tt.want)
		}
	}
}
