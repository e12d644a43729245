package fleet

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"sluice/internal/testenv"
)

const baseConfig = `{
  "max_open_trades": 3,
  "stake_currency": "USDT",
  "stake_amount": "unlimited",
  "dry_run": true,
  "strategy": "SampleStrategy",
  "exchange": {
    "name": "binance",
    "key": "",
    "secret": "",
    "ccxt_config": {"enableRateLimit": true},
    "pair_whitelist": ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT", "DOGE/USDT", "BNB/USDT"]
  },
  "pairlists": [{"method": "StaticPairList"}],
  "entry_pricing": {"price_side": "same"},
  "exit_pricing": {"price_side": "same"}
}`

// documented are the freqtrade config keys sluice fleet writes, as
// freqtrade's configuration documentation and schema name them
// (freqtrade/configuration/config_schema.py; strategy and
// exchange.ccxt_sync_config are documented in docs/configuration.md).
var documented = map[string][]string{
	"":         {"strategy", "bot_name", "db_url", "exchange"},
	"exchange": {"name", "key", "secret", "pair_whitelist", "pair_blacklist", "ccxt_config", "ccxt_async_config", "ccxt_sync_config"},
}

func options(t *testing.T) Options {
	var base map[string]any
	if err := json.Unmarshal([]byte(baseConfig), &base); err != nil {
		t.Fatal(err)
	}
	return Options{Base: base, Proxy: "http://172.30.0.2:3128", CAFile: "/sluice/ca-bundle.pem", DNS: "172.30.0.2",
		ContainerDir: "/freqtrade/user_data/fleet", Image: "freqtradeorg/freqtrade:stable"}
}

// writeFleet writes o's fleet to a new directory and reads it back.
func writeFleet(t *testing.T, o Options) (string, map[string]map[string]any) {
	t.Helper()
	bots, err := Bots(o)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, removed, err := Write(dir, o, bots)
	if err != nil || len(removed) != 0 {
		t.Fatalf("Write into a new directory: removed %v, %v", removed, err)
	}
	return dir, generated(t, files)
}

// generated reads back every file Write wrote: the configs as JSON, with
// every key sluice added checked against freqtrade's documented keys.
func generated(t *testing.T, files []string) map[string]map[string]any {
	t.Helper()
	configs := map[string]map[string]any{}
	var base map[string]any
	json.Unmarshal([]byte(baseConfig), &base)
	for _, f := range files {
		if !strings.HasSuffix(f, ".json") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatalf("%s is not JSON: %v", f, err)
		}
		for k := range cfg {
			if _, had := base[k]; !had && !slices.Contains(documented[""], k) {
				t.Errorf("%s: key %q is not a documented freqtrade key", f, k)
			}
		}
		for k := range cfg["exchange"].(map[string]any) {
			if !slices.Contains(documented["exchange"], k) {
				t.Errorf("%s: exchange.%s is not a documented freqtrade key", f, k)
			}
		}
		async := cfg["exchange"].(map[string]any)["ccxt_async_config"].(map[string]any)
		if async["aiohttp_trust_env"] != true || async["cafile"] != "/sluice/ca-bundle.pem" {
			t.Errorf("%s: ccxt_async_config %v: want aiohttp_trust_env and the bundle as cafile", f, async)
		}
		configs[cfg["bot_name"].(string)] = cfg
	}
	return configs
}

// TestSplit: the pair whitelist is dealt across the bots, every pair to
// exactly one; each bot has its own name and database; the compose file
// puts them on the internal network with sluice as proxy and DNS, and
// docker-compose accepts it together with deploy/compose.yaml.
func TestSplit(t *testing.T) {
	o := options(t)
	o.Split = 3
	dir, configs := writeFleet(t, o)
	var all []string
	dbs := map[string]bool{}
	for name, cfg := range configs {
		for _, p := range cfg["exchange"].(map[string]any)["pair_whitelist"].([]any) {
			all = append(all, p.(string))
		}
		dbs[cfg["db_url"].(string)] = true
		if cfg["strategy"] != "SampleStrategy" {
			t.Errorf("%s: strategy %v, want the base's", name, cfg["strategy"])
		}
	}
	slices.Sort(all)
	want := []string{"ADA/USDT", "BNB/USDT", "BTC/USDT", "DOGE/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"}
	if len(configs) != 3 || !slices.Equal(all, want) || len(dbs) != 3 {
		t.Errorf("%d bots, pairs %v, %d databases; want 3 bots, each pair once, a database each", len(configs), all, len(dbs))
	}
	checkCompose(t, filepath.Join(dir, "compose.fleet.yaml"), 3)

	// Written again with 2 bots: bot3's config goes (its database stays).
	os.WriteFile(filepath.Join(dir, "tradesv3-bot3.sqlite"), []byte("trades"), 0o644)
	o.Split = 2
	bots, err := Bots(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, removed, err := Write(dir, o, bots); err != nil || len(removed) != 1 || filepath.Base(removed[0]) != "config-bot3.json" {
		t.Errorf("rewriting 3 bots as 2: removed %v (%v), want config-bot3.json", removed, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "config-*.json")); len(left) != 2 {
		t.Errorf("configs after the rewrite: %v, want bot1's and bot2's", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "tradesv3-bot3.sqlite")); err != nil {
		t.Errorf("bot3's trade database was removed: %v", err)
	}

	o.Split = 8
	if _, err := Bots(o); err == nil {
		t.Error("8 bots for 7 pairs accepted")
	}
}

// TestWarnings: bots sharing the base's account are warned of what the
// base's max_open_trades and stake_amount add up to across them.
func TestWarnings(t *testing.T) {
	o := options(t)
	o.Split = 3
	o.Base["max_open_trades"], o.Base["stake_amount"] = 6.0, "unlimited"
	bots, err := Bots(o)
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(Warnings(o, bots), "\n")
	for _, want := range []string{"together up to 18 open trades", "max_open_trades 2", "stake_amount is unlimited", "tradable_balance_ratio 0.33"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	o.Base["stake_amount"] = 100.0
	if w := strings.Join(Warnings(o, bots), "\n"); !strings.Contains(w, "may stake 1800") {
		t.Errorf("warnings for stake_amount 100:\n%s", w)
	}
	if w := Warnings(o, bots[:1]); len(w) != 0 {
		t.Errorf("one bot warned: %v", w)
	}
}

// TestStrategies: a bot per strategy file, named after its class; a file
// without one is no strategy.
func TestStrategies(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "ema.py"), []byte("from freqtrade.strategy import IStrategy\n\nclass EmaCross(IStrategy):\n    timeframe = '5m'\n"), 0o644)
	os.WriteFile(filepath.Join(src, "rsi.py"), []byte("import freqtrade.strategy\n\nclass RsiDip(freqtrade.strategy.IStrategy):\n    pass\n"), 0o644)
	os.WriteFile(filepath.Join(src, "helpers.py"), []byte("def util():\n    return 1\n"), 0o644)
	strategies, err := FindStrategies(src)
	if err != nil {
		t.Fatal(err)
	}
	o := options(t)
	o.Strategies = strategies
	dir, configs := writeFleet(t, o)
	if len(configs) != 2 || configs["emacross"]["strategy"] != "EmaCross" || configs["rsidip"]["strategy"] != "RsiDip" {
		t.Errorf("bots %v; want emacross running EmaCross and rsidip running RsiDip", configs)
	}
	checkCompose(t, filepath.Join(dir, "compose.fleet.yaml"), 2)
	if _, err := FindStrategies(t.TempDir()); err == nil {
		t.Error("a directory without strategies accepted")
	}
}

func checkCompose(t *testing.T, path string, bots int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			DNS         []string          `yaml:"dns"`
			Networks    []string          `yaml:"networks"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Command     []string          `yaml:"command"`
			Profiles    []string          `yaml:"profiles"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(c.Services) != bots+1 {
		t.Errorf("%s has %d services, want %d bots and the single bot's override", path, len(c.Services), bots)
	}
	if single := c.Services["bot"]; len(single.Profiles) == 0 {
		t.Errorf("%s leaves compose.yaml's single bot to start beside the fleet, with the same keys", path)
	}
	abs, _ := filepath.Abs(filepath.Dir(path))
	if !strings.Contains(string(data), "-f "+filepath.ToSlash(path)+" up -d") && !strings.Contains(string(data), "-f "+filepath.ToSlash(filepath.Join(abs, "compose.fleet.yaml"))+" up -d") {
		t.Errorf("%s does not say how to start it with its own path:\n%s", path, data)
	}
	for name, s := range c.Services {
		if name == "bot" {
			continue
		}
		// The configs are where the command looks: the -o directory is
		// mounted at the directory the command names.
		mount := filepath.ToSlash(abs) + ":/freqtrade/user_data/fleet"
		if !slices.Contains(s.Volumes, mount) || len(s.Command) != 3 || !strings.HasPrefix(s.Command[2], "/freqtrade/user_data/fleet/config-") {
			t.Errorf("%s: volumes %v, command %v; want %s mounted and a config under it", name, s.Volumes, s.Command, mount)
		}
		if !slices.Equal(s.DNS, []string{"172.30.0.2"}) || !slices.Equal(s.Networks, []string{"bots"}) ||
			s.Environment["HTTPS_PROXY"] != "http://172.30.0.2:3128" || s.Environment["REQUESTS_CA_BUNDLE"] != "/sluice/ca-bundle.pem" {
			t.Errorf("%s: %+v; want sluice as DNS and proxy, the bundle trusted, the internal network only", name, s)
		}
		if !slices.Contains(s.Volumes, "sluice-ca:/sluice:ro") || slices.ContainsFunc(s.Volumes, func(v string) bool { return strings.HasPrefix(v, "sluice-data") }) {
			t.Errorf("%s mounts %v; want the CA volume, never sluice's data", name, s.Volumes)
		}
	}
	dc := testenv.RequireTool(t, "docker-compose")
	out, err := exec.Command(dc, "-f", filepath.Join("..", "..", "deploy", "compose.yaml"), "-f", path, "config").Output()
	if err != nil {
		t.Fatalf("docker-compose with deploy/compose.yaml and %s: %v\n%s", path, err, out)
	}
	// The merged project: the single bot is behind a profile nobody
	// activates, so that up starts only the fleet.
	var merged struct {
		Services map[string]struct {
			Profiles []string `yaml:"profiles"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &merged); err != nil {
		t.Fatal(err)
	}
	if len(merged.Services) != bots+3 || len(merged.Services["bot"].Profiles) == 0 {
		t.Errorf("docker-compose with deploy/compose.yaml and %s: %d services, the single bot's profiles %v; want sluice, sluice-ca, the %d fleet bots and the single bot behind a profile",
			path, len(merged.Services), merged.Services["bot"].Profiles, bots)
	}
}
