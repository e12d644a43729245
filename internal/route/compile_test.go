package route

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestErrorsGolden checks that every problem of a bad file is reported at
// once, each with its key path and line, whether the config's structure
// or the compile step finds it. Run with -update to rewrite the golden files.
func TestErrorsGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad-*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/bad-*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f, nil)
			if err == nil {
				t.Fatalf("Load(%s) succeeded, want errors", f)
			}
			got := []byte(err.Error() + "\n")
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, _ := os.ReadFile(golden)
			if !bytes.Equal(got, want) {
				t.Errorf("Load(%s) errors:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
}

// TestOnboardingNameInDNS: with a transparent HTTP listener, sluice's DNS
// answers sluice.invalid (the onboarding page) like an allowed host; with
// none, nothing would serve the page there, and the name is refused.
func TestOnboardingNameInDNS(t *testing.T) {
	for _, tc := range []struct {
		listen string
		want   bool
	}{
		{"listen: {proxy: 127.0.0.1:0, admin: \"off\", dns: 127.0.0.1:0, transparent_http: 127.0.0.1:0}\n", true},
		{"listen: {proxy: 127.0.0.1:0, admin: \"off\", dns: 127.0.0.1:0}\n", false},
	} {
		cfg := tc.listen + "data_dir: " + t.TempDir() + "\ndns: {answer: [192.0.2.10]}\nhosts:\n  api.binance.com: {}\n"
		table, err := Parse([]byte(cfg), "test", t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := table.DNS.Allowed("sluice.invalid"); got != tc.want {
			t.Errorf("%sDNS answers sluice.invalid: %v, want %v", tc.listen, got, tc.want)
		}
		if !table.DNS.Allowed("api.binance.com") || table.DNS.Allowed("evil.example") {
			t.Errorf("%sthe allowed hosts' answers changed", tc.listen)
		}
	}
}

// TestValuesOrders: prices are read from tickers and streams only while a
// client, group or key has a notional limit to value orders against.
func TestValuesOrders(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "bot.pass")
	os.WriteFile(pass, []byte("p\n"), 0o600)
	for _, tc := range []struct {
		limits string
		want   bool
	}{
		{"", false},
		{"    limits: {orders_per_minute: 3}\n", false},
		{"    limits: {notional_per_order: 500}\n", true},
		{"    limits: {notional_per_day: 50000}\n", true},
	} {
		cfg := "listen: {proxy: 127.0.0.1:0, admin: \"off\"}\ndata_dir: " + dir + "\nhosts:\n  api.binance.com: {}\nclients:\n  bot:\n    password_file: " + pass + "\n    hosts: [api.binance.com]\n" + tc.limits
		table, err := Parse([]byte(cfg), "test", dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := table.valuesOrders(); got != tc.want {
			t.Errorf("%q: orders valued %v, want %v", tc.limits, got, tc.want)
		}
	}
}
