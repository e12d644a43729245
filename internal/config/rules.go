package config

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"go.yaml.in/yaml/v3"
)

// RuleSet is a named set of request rules: a request that breaks one is
// answered 4xx at once and never forwarded; a client that keeps breaking
// them is banned.
type RuleSet struct {
	// Methods, when set, are the only methods allowed.
	Methods []string `yaml:"methods,omitempty,flow"`
	// AllowPaths, when set, are the only paths allowed; DenyPaths are refused.
	AllowPaths []PathMatch `yaml:"allow_paths,omitempty"`
	DenyPaths  []PathMatch `yaml:"deny_paths,omitempty"`
	// MaxBodyBytes refuses larger bodies, by Content-Length and while
	// streaming (a chunked or lying body is cut off). 0: no limit.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes,omitempty"`
	// MaxHeaderBytes and MaxHeaders bound the request's header fields. 0: no limit.
	MaxHeaderBytes ByteSize `yaml:"max_header_bytes,omitempty"`
	MaxHeaders     int      `yaml:"max_headers,omitempty"`
	// JSONMaxDepth, when set, requires a body declared JSON to be valid
	// JSON nested at most this deep.
	JSONMaxDepth int `yaml:"json_max_depth,omitempty"`
	// RequireHeaders must be present; ForbidHeaders must not.
	RequireHeaders []string `yaml:"require_headers,omitempty,flow"`
	ForbidHeaders  []string `yaml:"forbid_headers,omitempty,flow"`
	// DenyQuery refuses a query parameter whose value matches the pattern.
	DenyQuery []QueryDeny `yaml:"deny_query,omitempty"`
	// DenyJSON refuses a JSON body with one of Values at Path
	// ("actions[].account": every element's field).
	DenyJSON []JSONDeny `yaml:"deny_json,omitempty"`
	// JSONRoot, when set, lists the JSON types the body may be: object, array.
	JSONRoot []string `yaml:"json_root,omitempty,flow"`
	// JSONLimits bound the values at a path: arrays to MaxItems elements,
	// strings to MaxLength bytes.
	JSONLimits []JSONLimit `yaml:"json_limits,omitempty"`
	// Ban bans clients that break the rules too often. Default: no bans.
	Ban *BanPolicy `yaml:"ban,omitempty"`
	// Answer is how violations are answered: sluice (default, JSON with
	// error, rule, detail) or eosio (400 {"message":RULE,"code":400} with
	// X-REJECTED-BY, as the node filter sluice replaces answered).
	Answer string `yaml:"answer,omitempty"`
}

// JSONLimit bounds the values at Path ("" is the document itself).
type JSONLimit struct {
	Path      string `yaml:"path"`
	MaxItems  int    `yaml:"max_items,omitempty"`
	MaxLength int    `yaml:"max_length,omitempty"`
}

// PathMatch is one of exact, prefix or regex, for the given methods
// (default: all).
type PathMatch struct {
	Exact   string   `yaml:"exact,omitempty"`
	Prefix  string   `yaml:"prefix,omitempty"`
	Regex   string   `yaml:"regex,omitempty"`
	Methods []string `yaml:"methods,omitempty,flow"`
}

// QueryDeny refuses Param when its value matches Pattern ("" : any value).
type QueryDeny struct {
	Param   string `yaml:"param"`
	Pattern string `yaml:"pattern,omitempty"`
}

// JSONDeny refuses Values at Path in a JSON body.
type JSONDeny struct {
	Path   string   `yaml:"path"`
	Values []string `yaml:"values,flow"`
	// EOSIOPacked: the value at Path is a hex-encoded EOSIO packed
	// transaction, refused if it names any of Values (as 64-bit EOSIO names).
	EOSIOPacked bool `yaml:"eosio_packed,omitempty"`
}

// BanPolicy bans a client for Duration once it commits Violations within Window.
type BanPolicy struct {
	Violations int      `yaml:"violations"`
	Window     Duration `yaml:"window"`
	Duration   Duration `yaml:"duration"`
}

// HostRules is a host entry's `rules`: the name of a rule set (from
// rule_sets, or an embedded profile's), or "off".
type HostRules struct {
	Off  bool
	Name string
}

// UnmarshalYAML accepts a name or off.
func (hr *HostRules) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Value == "" {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: rules: want the name of a rule set, or off", n.Line)}}
	}
	if n.Value == "off" {
		hr.Off = true
	} else {
		hr.Name = n.Value
	}
	return nil
}

// MarshalYAML writes the name or off.
func (hr HostRules) MarshalYAML() (any, error) {
	if hr.Off {
		return "off", nil
	}
	return hr.Name, nil
}

func (p PathMatch) validate() error {
	n := 0
	for _, s := range []string{p.Exact, p.Prefix, p.Regex} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("give exactly one of exact, prefix, regex")
	}
	return nil
}

func (rs *RuleSet) validate() error {
	var errs []error
	for _, m := range rs.Methods {
		if m != strings.ToUpper(m) || strings.ContainsAny(m, " /") {
			errs = append(errs, fmt.Errorf("method %q: write it in upper case", m))
		}
	}
	for i, p := range append(append([]PathMatch{}, rs.AllowPaths...), rs.DenyPaths...) {
		if err := p.validate(); err != nil {
			errs = append(errs, fmt.Errorf("path %d: %w", i, err))
		}
	}
	for _, q := range rs.DenyQuery {
		if q.Param == "" {
			errs = append(errs, errors.New("deny_query: param is required"))
		}
	}
	for _, j := range rs.DenyJSON {
		if j.Path == "" || len(j.Values) == 0 {
			errs = append(errs, errors.New("deny_json: path and values are required"))
		}
	}
	for _, h := range append(append([]string{}, rs.RequireHeaders...), rs.ForbidHeaders...) {
		if http.CanonicalHeaderKey(h) == "" {
			errs = append(errs, fmt.Errorf("header %q", h))
		}
	}
	if rs.MaxHeaders < 0 || rs.JSONMaxDepth < 0 {
		errs = append(errs, errors.New("limits must not be negative"))
	}
	for _, t := range rs.JSONRoot {
		if t != "object" && t != "array" {
			errs = append(errs, fmt.Errorf("json_root %q is not object or array", t))
		}
	}
	for _, l := range rs.JSONLimits {
		if l.MaxItems < 0 || l.MaxLength < 0 || l.MaxItems == 0 && l.MaxLength == 0 {
			errs = append(errs, fmt.Errorf("json_limits %q: give max_items or max_length", l.Path))
		}
	}
	if rs.Answer != "" && rs.Answer != "sluice" && rs.Answer != "eosio" {
		errs = append(errs, fmt.Errorf("answer %q is not sluice or eosio", rs.Answer))
	}
	if b := rs.Ban; b != nil && (b.Violations < 1 || b.Window <= 0 || b.Duration <= 0) {
		errs = append(errs, errors.New("ban needs violations >= 1, a window and a duration"))
	}
	return errors.Join(errs...)
}
