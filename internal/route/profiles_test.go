package route

import (
	"testing"

	"sluice/internal/config"
)

func TestCacheMode(t *testing.T) {
	own := []config.CacheRule{{Path: "/x", TTL: config.Duration(1)}}
	for _, tt := range []struct {
		name    string
		hc      *config.HostCache
		profile []config.CacheRule
		want    config.CacheMode
	}{
		{"nothing", nil, nil, config.CacheOff},
		{"profile rules", nil, own, config.CacheRules},
		{"own rules", &config.HostCache{Rules: own}, nil, config.CacheRules},
		{"off on a profiled host", &config.HostCache{Mode: config.CacheOff}, own, config.CacheOff},
		{"standard", &config.HostCache{Mode: config.CacheStandard}, nil, config.CacheStandard},
	} {
		if got := cacheMode(tt.hc, tt.profile); got != tt.want {
			t.Errorf("%s: cacheMode = %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestProfilePartsCompiledOnce: hosts of one profile share its compiled
// cache rules, rule set and budgets; a host with rules of its own gets its
// own, its rules before the profile's.
func TestProfilePartsCompiledOnce(t *testing.T) {
	tb, err := Parse([]byte(`
hosts:
  api.binance.com: {profile: binance}
  api1.binance.com: {profile: binance}
  api2.binance.com:
    profile: binance
    cache: {rules: [{path: /api/v3/ticker/price, ttl: 1s}]}
  plain.test: {}
`), "t.yaml", t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := tb.routes["api.binance.com"], tb.routes["api1.binance.com"], tb.routes["api2.binance.com"]
	if a.Cache != b.Cache || a.Rules != b.Rules || &a.Throttle[0] != &b.Throttle[0] {
		t.Error("two hosts of the binance profile compiled its parts twice")
	}
	if c.Cache == a.Cache || c.Rules != a.Rules {
		t.Error("a host with cache rules of its own shares the profile's compiled cache, or not its rule set")
	}
	if tb.routes["plain.test"].Rules != nil || tb.routes["plain.test"].Throttle != nil {
		t.Error("a host without profile has rules or a budget")
	}
}
