// Package fleet writes the configs of a fleet of freqtrade bots behind
// sluice: one per strategy file, or a base config's pair whitelist split
// across N bots, each with its own name and trade database and the
// settings ccxt's two clients need to go through sluice (the sync client,
// requests, follows the proxy environment; the async one, aiohttp, only
// with aiohttp_trust_env, and trusts only its cafile), plus a compose file
// that puts them on sluice's internal network (deploy/compose.yaml).
package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Options say what to write.
type Options struct {
	// Base is a freqtrade config (JSON) every bot starts from.
	Base map[string]any
	// Strategies: one bot per strategy file (its IStrategy class); or
	// Split: the base's exchange.pair_whitelist dealt across Split bots.
	Strategies []Strategy
	Split      int
	// Proxy, CAFile and DNS are what the bots use, as seen from inside
	// their containers; ContainerDir is where the configs are there.
	Proxy, CAFile, DNS, ContainerDir string
	Image                            string
}

// Strategy is a strategy file's class.
type Strategy struct{ File, Class string }

// Bot is one generated bot.
type Bot struct {
	Name   string
	Config map[string]any
}

var strategyClass = regexp.MustCompile(`(?m)^class\s+(\w+)\s*\(\s*[\w.]*IStrategy\s*\)`)

// FindStrategies reads the strategy files (*.py) of dir: each names the
// first IStrategy subclass it defines; a file with none is not a strategy.
func FindStrategies(dir string) ([]Strategy, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.py"))
	if err != nil {
		return nil, err
	}
	var out []Strategy
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if m := strategyClass.FindSubmatch(src); m != nil {
			out = append(out, Strategy{File: f, Class: string(m[1])})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no strategy file (a .py file with a class derived from IStrategy)", dir)
	}
	return out, nil
}

// Bots returns the bots' configs.
func Bots(o Options) ([]Bot, error) {
	exchange, _ := o.Base["exchange"].(map[string]any)
	if exchange == nil {
		return nil, errors.New("the base config has no exchange section")
	}
	var bots []Bot
	switch {
	case len(o.Strategies) > 0 && o.Split > 0:
		return nil, errors.New("give strategies or a split, not both")
	case len(o.Strategies) > 0:
		for _, s := range o.Strategies {
			b := o.bot(strings.ToLower(s.Class))
			b.Config["strategy"] = s.Class
			bots = append(bots, b)
		}
	case o.Split > 0:
		pairs, _ := exchange["pair_whitelist"].([]any)
		if len(pairs) < o.Split {
			return nil, fmt.Errorf("exchange.pair_whitelist has %d pairs: too few for %d bots", len(pairs), o.Split)
		}
		for i := range o.Split {
			b := o.bot(fmt.Sprintf("bot%d", i+1))
			var mine []any
			for j := i; j < len(pairs); j += o.Split {
				mine = append(mine, pairs[j])
			}
			b.Config["exchange"].(map[string]any)["pair_whitelist"] = mine
			bots = append(bots, b)
		}
	default:
		return nil, errors.New("give strategy files or a number of bots to split the pair whitelist across")
	}
	return bots, nil
}

// bot is a deep copy of the base with the bot's name, database and the
// async client's settings.
func (o Options) bot(name string) Bot {
	var cfg map[string]any
	raw, _ := json.Marshal(o.Base)
	json.Unmarshal(raw, &cfg)
	cfg["bot_name"] = name
	cfg["db_url"] = "sqlite:///" + filepath.ToSlash(filepath.Join(o.ContainerDir, "tradesv3-"+name+".sqlite"))
	exchange := cfg["exchange"].(map[string]any)
	async, _ := exchange["ccxt_async_config"].(map[string]any)
	if async == nil {
		async = map[string]any{}
	}
	async["aiohttp_trust_env"] = true // aiohttp ignores HTTPS_PROXY without it
	async["cafile"] = o.CAFile        // ccxt trusts only this file (else certifi's roots)
	exchange["ccxt_async_config"] = async
	if _, ok := exchange["ccxt_config"]; !ok {
		exchange["ccxt_config"] = map[string]any{}
	}
	return Bot{Name: name, Config: cfg}
}

// Environment is what each bot's container gets: the proxy for both ccxt
// clients and the bundle for requests, Python and Node.
func (o Options) Environment() map[string]string {
	env := map[string]string{"NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
	for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} {
		env[k] = o.Proxy
	}
	for _, k := range []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"} {
		env[k] = o.CAFile
	}
	return env
}

// Warnings are what the bots, all trading on the base's one exchange
// account, would do together that no single bot's config shows: each
// keeps the base's max_open_trades and stake_amount.
func Warnings(o Options, bots []Bot) []string {
	n := len(bots)
	if n < 2 {
		return nil
	}
	var out []string
	if m, ok := o.Base["max_open_trades"].(float64); ok && m > 0 {
		out = append(out, fmt.Sprintf("the %d bots share one exchange account, each with the base's max_open_trades %g: together up to %g open trades; give each bot its share (max_open_trades %g) if the account should hold %g", n, m, m*float64(n), max(1, float64(int(m)/n)), m))
	}
	switch stake := o.Base["stake_amount"].(type) {
	case string:
		if stake == "unlimited" {
			out = append(out, fmt.Sprintf("stake_amount is unlimited: each of the %d bots sizes its trades on the whole account's balance, as if it were alone; give each a fixed stake_amount, or tradable_balance_ratio %.2f", n, 0.99/float64(n)))
		}
	case float64:
		m, _ := o.Base["max_open_trades"].(float64)
		if m > 0 {
			out = append(out, fmt.Sprintf("stake_amount %g with max_open_trades %g per bot: the %d bots together may stake %g on the one account", stake, m, n, stake*m*float64(n)))
		}
	}
	return out
}

// Write writes config-NAME.json for each bot and compose.fleet.yaml to dir.
// The compose file mounts dir itself at o.ContainerDir (so the commands
// find the configs wherever dir is), and keeps deploy/compose.yaml's
// single bot from starting: it trades with the same keys as the fleet.
// The configs of bots it no longer writes are removed (removed).
func Write(dir string, o Options, bots []Bot) (written, removed []string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, err
	}
	overlay := filepath.ToSlash(filepath.Join(abs, "compose.fleet.yaml"))
	var compose strings.Builder
	fmt.Fprintf(&compose, `# Written by sluice fleet: %d bots for deploy/compose.yaml, which defines
# sluice, the bots network and the sluice-ca volume. It keeps that file's
# single bot from starting (it trades with the same keys, and the fleet
# replaces it). From the directory of compose.yaml:
#   docker compose -f compose.yaml rm --stop --force bot     # if the single bot runs
#   docker compose -f compose.yaml -f %s up -d
services:
  bot:
    profiles: [replaced-by-fleet]
`, len(bots), overlay)
	env := o.Environment()
	for _, b := range bots {
		data, err := json.MarshalIndent(b.Config, "", "  ")
		if err != nil {
			return nil, nil, err
		}
		path := filepath.Join(dir, "config-"+b.Name+".json")
		if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil { // it may hold exchange keys
			return nil, nil, err
		}
		written = append(written, path)
		fmt.Fprintf(&compose, "  bot-%s:\n    image: %s\n    restart: unless-stopped\n", b.Name, o.Image)
		fmt.Fprintf(&compose, "    command: [\"trade\", \"--config\", %q]\n", filepath.ToSlash(filepath.Join(o.ContainerDir, "config-"+b.Name+".json")))
		fmt.Fprintf(&compose, "    volumes:\n      - ./user_data:/freqtrade/user_data\n      - %q\n      - sluice-ca:/sluice:ro\n    environment:\n",
			filepath.ToSlash(abs)+":"+o.ContainerDir)
		for _, k := range slices.Sorted(maps.Keys(env)) {
			fmt.Fprintf(&compose, "      %s: %q\n", k, env[k])
		}
		fmt.Fprintf(&compose, "    dns: [%q]\n    networks: [bots]\n", o.DNS)
		compose.WriteString("    depends_on:\n      sluice-ca:\n        condition: service_completed_successfully\n")
	}
	path := filepath.Join(dir, "compose.fleet.yaml")
	if err := os.WriteFile(path, []byte(compose.String()), 0o644); err != nil {
		return nil, nil, err
	}
	// The configs of bots an earlier run wrote and this one does not: the
	// compose file no longer starts them, and a stale config must not
	// look like a bot of the fleet. Their trade databases stay.
	old, err := filepath.Glob(filepath.Join(dir, "config-*.json"))
	if err != nil {
		return nil, nil, err
	}
	for _, f := range old {
		if !slices.Contains(written, f) {
			if err := os.Remove(f); err != nil {
				return nil, nil, err
			}
			removed = append(removed, f)
		}
	}
	return append(written, path), removed, nil
}
