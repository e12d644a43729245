package config

import (
	"bytes"
	"embed"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Profiles are embedded YAML files, one per API (profiles/NAME.yaml), that
// carry what sluice knows about that API: the cache rules of its public
// endpoints, its budgets and its rule set. A host entry names one with
// `profile: NAME`; which hosts do is the config's (the embedded default
// lists the usual ones), never the profile's.
//
//go:embed profiles/*.yaml
var profileFS embed.FS

// Profile is one embedded API profile.
type Profile struct {
	Name  string `yaml:"name"`
	Docs  string `yaml:"docs"`
	Cache struct {
		Rules []CacheRule `yaml:"rules"`
	} `yaml:"cache"`
	// Throttle holds the API's budgets, tried in order by path_regex.
	Throttle []Throttle `yaml:"throttle"`
	// Rules is the request rule set applied to the profile's hosts by
	// default; other host entries can name it too.
	Rules *RuleSet `yaml:"rules"`
	// Groups sort the API's endpoints for clients' grants, tried in
	// order; without any, read is GET and HEAD, and trade the rest.
	Groups []EndpointGroup `yaml:"groups"`
	// Streams, when set, shares the API's public WebSocket market streams.
	Streams *StreamsProfile `yaml:"streams"`
}

// Profiles returns the embedded profiles by name. They are parsed once;
// callers must not modify them.
var Profiles = sync.OnceValues(func() (map[string]*Profile, error) {
	entries, err := profileFS.ReadDir("profiles")
	if err != nil {
		return nil, err
	}
	out := map[string]*Profile{}
	for _, e := range entries {
		data, err := profileFS.ReadFile("profiles/" + e.Name())
		if err != nil {
			return nil, err
		}
		p := &Profile{}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(p); err != nil {
			return nil, fmt.Errorf("profile %s: %w", e.Name(), err)
		}
		if want := strings.TrimSuffix(e.Name(), path.Ext(e.Name())); p.Name != want {
			return nil, fmt.Errorf("profile %s: name %q, want %q", e.Name(), p.Name, want)
		}
		for i := range p.Cache.Rules {
			if err := p.Cache.Rules[i].validate(); err != nil {
				return nil, fmt.Errorf("profile %s: cache.rules[%d]: %w", p.Name, i, err)
			}
			p.Cache.Rules[i].applyDefaults()
		}
		for i := range p.Throttle {
			if err := p.Throttle[i].validate(); err != nil {
				return nil, fmt.Errorf("profile %s: throttle[%d]: %w", p.Name, i, err)
			}
		}
		if p.Streams != nil {
			if err := p.Streams.validate(); err != nil {
				return nil, fmt.Errorf("profile %s: %w", p.Name, err)
			}
		}
		if p.Rules != nil {
			if err := p.Rules.validate(); err != nil {
				return nil, fmt.Errorf("profile %s: rules: %w", p.Name, err)
			}
		}
		out[p.Name] = p
	}
	return out, nil
})

// ProfileNames lists the embedded profiles, sorted.
func ProfileNames() []string {
	ps, _ := Profiles() // embedded and tested: cannot fail
	names := make([]string, 0, len(ps))
	for n := range ps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
