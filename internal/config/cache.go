package config

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// CacheConfig is the top-level `cache` section: the limits of the one
// in-memory response cache that every host shares.
type CacheConfig struct {
	// MaxBytes bounds the memory of all cached responses; the least
	// recently used go first. Default 256MiB.
	MaxBytes ByteSize `yaml:"max_bytes" reload:"restart"`
	// MaxObjectBytes is the largest response body stored. Default 8MiB.
	MaxObjectBytes ByteSize `yaml:"max_object_bytes" reload:"restart"`
	// StaleIfError serves an entry expired by at most this long when the
	// upstream fails (connect error, 5xx, 429, 418). Default 60s; 0s disables.
	StaleIfError *Duration `yaml:"stale_if_error,omitempty" reload:"live"`
	// FetchTimeout bounds one upstream fetch that fills the cache. Default 60s.
	FetchTimeout Duration `yaml:"fetch_timeout" reload:"restart"`
	// RefreshGrace is how long past its TTL a rules-mode entry still
	// answers while its refresh runs. Default: the round trip of the fill
	// that stored it; 0s: never past the TTL.
	RefreshGrace *Duration `yaml:"refresh_grace,omitempty" reload:"restart"`
}

// CacheMode says how a host's responses are cached.
type CacheMode string

const (
	// CacheRules caches what the host's rules (and its profile's) match,
	// for the rule's TTL, whatever the upstream's Cache-Control says.
	CacheRules CacheMode = "rules"
	// CacheStandard behaves as an RFC 9111 shared cache.
	CacheStandard CacheMode = "standard"
	// CacheOff caches nothing for the host.
	CacheOff CacheMode = "off"
)

// HostCache is a host entry's `cache`: a mode ("cache: standard") or a
// mapping with the mode and rules.
type HostCache struct {
	// Mode defaults to rules when the host or its profile has rules, else off.
	Mode CacheMode `yaml:"mode,omitempty"`
	// Rules are tried in order before the profile's; the first match wins.
	Rules []CacheRule `yaml:"rules,omitempty"`
	// StaleIfError overrides cache.stale_if_error for this host.
	StaleIfError *Duration `yaml:"stale_if_error,omitempty"`
}

// UnmarshalYAML accepts a bare mode or the full mapping.
func (hc *HostCache) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		m := CacheMode(n.Value)
		if err := m.check(n.Line); err != nil {
			return err
		}
		hc.Mode = m
		return nil
	}
	type plain HostCache // without this method
	return strictDecode(n, (*plain)(hc))
}

// strictDecode decodes a mapping node as Parse decodes the whole file:
// unknown keys are errors. (yaml.Node.Decode has no KnownFields, so the
// node is re-read by a strict decoder and its line numbers shifted back.)
func strictDecode(n *yaml.Node, out any) error {
	data, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err = dec.Decode(out)
	var te *yaml.TypeError
	if errors.As(err, &te) {
		for i, e := range te.Errors {
			var line int
			if _, scanErr := fmt.Sscanf(e, "line %d:", &line); scanErr == nil {
				te.Errors[i] = fmt.Sprintf("line %d:%s", line+n.Line-1, strings.SplitN(e, ":", 2)[1])
			}
		}
		return te
	}
	return err
}

// UnmarshalYAML accepts the three cache modes only.
func (m *CacheMode) UnmarshalYAML(n *yaml.Node) error {
	v := CacheMode(n.Value)
	if err := v.check(n.Line); err != nil {
		return err
	}
	*m = v
	return nil
}

func (m CacheMode) check(line int) error {
	switch m {
	case CacheRules, CacheStandard, CacheOff:
		return nil
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: cache mode %q is not one of rules, standard, off", line, m)}}
}

// CacheRule caches the responses to matching requests for TTL.
type CacheRule struct {
	// Path matches request paths that start with it.
	Path string `yaml:"path,omitempty"`
	// PathRegex matches request paths (Go regexp syntax); give Path or PathRegex.
	PathRegex string `yaml:"path_regex,omitempty"`
	// Methods that may be served from the cache: GET and HEAD (default both).
	Methods []string `yaml:"methods,omitempty,flow"`
	// TTL is how long a stored response is served without asking upstream.
	TTL Duration `yaml:"ttl"`
	// IgnoreParams are query parameters left out of the cache key (e.g. a
	// client timestamp that would make every request unique).
	IgnoreParams []string `yaml:"ignore_params,omitempty,flow"`
	// Public marks the endpoint's data as the same for every caller, so a
	// request carrying credentials may still be served from the cache.
	Public bool `yaml:"public,omitempty"`
	// Statuses that are stored. Default [200].
	Statuses []int `yaml:"statuses,omitempty,flow"`
}

func (r *CacheRule) validate() error {
	var errs []error
	switch {
	case r.Path == "" && r.PathRegex == "":
		errs = append(errs, errors.New("give path or path_regex"))
	case r.Path != "" && r.PathRegex != "":
		errs = append(errs, errors.New("give path or path_regex, not both"))
	case r.Path != "" && !strings.HasPrefix(r.Path, "/"):
		errs = append(errs, fmt.Errorf("path %q must start with /", r.Path))
	}
	for _, m := range r.Methods {
		if m != "GET" && m != "HEAD" {
			errs = append(errs, fmt.Errorf("method %q cannot be cached (GET and HEAD only)", m))
		}
	}
	if r.TTL <= 0 {
		errs = append(errs, errors.New("ttl must be positive"))
	}
	for _, s := range r.Statuses {
		if s < 200 || s > 599 {
			errs = append(errs, fmt.Errorf("status %d is not a final HTTP status", s))
		}
	}
	return errors.Join(errs...)
}

func (r *CacheRule) applyDefaults() {
	if len(r.Methods) == 0 {
		r.Methods = []string{"GET", "HEAD"}
	}
	if len(r.Statuses) == 0 {
		r.Statuses = []int{200}
	}
	slices.Sort(r.IgnoreParams)
}

// ByteSize is a size in bytes, written as 1048576, "512KiB", "8MiB" or "1GiB".
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

// UnmarshalYAML parses a size.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	s := strings.TrimSpace(n.Value)
	mult := int64(1)
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a size (examples: 65536, 512KiB, 8MiB, 1GiB)", n.Line, n.Value)}}
	}
	*b = ByteSize(v * mult)
	return nil
}

// MarshalYAML writes the size with the largest binary unit that divides it.
func (b ByteSize) MarshalYAML() (any, error) {
	for _, u := range slices.Backward(byteUnits[:3]) {
		if b >= ByteSize(u.mult) && int64(b)%u.mult == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.mult, u.suffix), nil
		}
	}
	return int64(b), nil
}
