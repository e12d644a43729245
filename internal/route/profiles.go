package route

import (
	"fmt"
	"strings"
	"time"

	"sluice/internal/config"
)

// profile returns the embedded profile a host entry names (nil for none),
// or an error at the entry's profile key.
func profile(key string, h *config.Host) (*config.Profile, error) {
	if h.Profile == "" || h.Profile == config.ProfileNone {
		return nil, nil
	}
	ps, err := config.Profiles()
	if err != nil {
		return nil, err
	}
	if p := ps[h.Profile]; p != nil {
		return p, nil
	}
	hint := ""
	if near := config.Closest(h.Profile, config.ProfileNames()); near != "" {
		hint = fmt.Sprintf("did you mean %q? ", near)
	}
	return nil, config.Under(fmt.Errorf("unknown profile %q (%sknown: %s)", h.Profile, hint, strings.Join(config.ProfileNames(), ", ")),
		"hosts", key, "profile")
}

// cacheMode returns how a host's (or the reverse listener's) responses are
// cached: its own mode, else rules when it or its profile has rules, else off.
func cacheMode(hc *config.HostCache, profileRules []config.CacheRule) config.CacheMode {
	if hc != nil && hc.Mode != "" {
		return hc.Mode
	}
	if hc != nil && len(hc.Rules) > 0 || len(profileRules) > 0 {
		return config.CacheRules
	}
	return config.CacheOff
}

// staleWindow returns the stale-if-error window: the host's own, else the global one.
func staleWindow(cfg *config.Config, hc *config.HostCache) time.Duration {
	if hc != nil && hc.StaleIfError != nil {
		return hc.StaleIfError.D()
	}
	return cfg.Cache.StaleIfError.D()
}

// ruleSet returns the rule set a host entry names (in rule_sets, then in
// the profiles) and its name; with no `rules`, its profile's. nil: none.
func ruleSet(cfg *config.Config, hr *config.HostRules, p *config.Profile) (string, *config.RuleSet, error) {
	if hr != nil {
		if hr.Off {
			return "", nil, nil
		}
		if rs, ok := cfg.RuleSets[hr.Name]; ok {
			return hr.Name, rs, nil
		}
		if ps, _ := config.Profiles(); ps[hr.Name] != nil && ps[hr.Name].Rules != nil {
			return hr.Name, ps[hr.Name].Rules, nil
		}
		return "", nil, fmt.Errorf("no rule set %q in rule_sets or the profiles", hr.Name)
	}
	if p != nil && p.Rules != nil {
		return p.Name, p.Rules, nil
	}
	return "", nil, nil
}
