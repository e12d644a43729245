package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as "30s", "5m" or "168h".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string. Errors carry the line and do
// not stop the decoding, so every bad value in a file is reported at once.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration (examples: 500ms, 30s, 5m, 168h)", n.Line, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string such as "30s".
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Mode is what sluice does with the traffic for a host.
type Mode string

const (
	// ModeIntercept terminates TLS with a leaf from sluice's CA, reads and
	// forwards each request over a fresh verified connection.
	ModeIntercept Mode = "intercept"
	// ModeTunnel splices CONNECT byte for byte; only host and port are checked.
	ModeTunnel Mode = "tunnel"
	// ModeDeny refuses the host.
	ModeDeny Mode = "deny"
	// ModeReport lets the traffic of every host the entry covers through
	// untouched (a CONNECT tunneled, a plain request forwarded) and logs
	// each host and port once: for learning what a fleet needs.
	ModeReport Mode = "report"
)

// UnmarshalYAML accepts the four modes only.
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	switch v := Mode(n.Value); v {
	case ModeIntercept, ModeTunnel, ModeDeny, ModeReport:
		*m = v
		return nil
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: mode %q is not one of intercept, tunnel, deny, report", n.Line, n.Value)}}
}

// PolicyMode is whether the host list is enforced (the default) or only
// reported against.
type PolicyMode string

const (
	// PolicyEnforce refuses what the host list does not allow.
	PolicyEnforce PolicyMode = "enforce"
	// PolicyReport lets what enforce would refuse through untouched, as
	// ModeReport does, and logs it once per host and port; an entry's own
	// mode: deny still refuses.
	PolicyReport PolicyMode = "report"
)

// UnmarshalYAML accepts enforce and report only.
func (m *PolicyMode) UnmarshalYAML(n *yaml.Node) error {
	switch v := PolicyMode(n.Value); v {
	case PolicyEnforce, PolicyReport:
		*m = v
		return nil
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: policy %q is not one of enforce, report", n.Line, n.Value)}}
}

// Addrs is one listen address or a list of them ("off": none). In YAML a
// single address may be written without the list.
type Addrs []string

// On says whether any address is listened on.
func (a Addrs) On() bool { return len(a) > 0 && !(len(a) == 1 && a[0] == Off) }

// UnmarshalYAML accepts an address or a list of addresses.
func (a *Addrs) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*a = Addrs{n.Value}
		return nil
	}
	var list []string
	if err := n.Decode(&list); err != nil {
		return err
	}
	*a = list
	return nil
}

// MarshalYAML writes a single address without the list.
func (a Addrs) MarshalYAML() (any, error) {
	if len(a) == 1 {
		return a[0], nil
	}
	return []string(a), nil
}
