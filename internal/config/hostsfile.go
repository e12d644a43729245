package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"sluice/internal/hostport"
)

// loadHostsFile adds an intercepted entry for every pattern in HostsFile
// that Hosts does not list already; Hosts wins, so a file can hold the plain
// list and the YAML the exceptions. An entry gets the profile the embedded
// default gives its host (api.binance.com: binance), so that an old
// stack's plain allowlist keeps the cache rules, budget and withdrawal
// guard sluice has for it.
func (c *Config) loadHostsFile() error {
	path := c.Path(c.HostsFile)
	data, err := ReadFile(path)
	if err != nil {
		return fieldErr(err, "hosts_file")
	}
	listed := map[string]bool{}
	for p := range c.Hosts {
		if n, err := hostport.ParsePattern(p); err == nil {
			listed[n] = true
		}
	}
	names, err := ParseHostList(data, path)
	for _, n := range names {
		if listed[n] {
			continue
		}
		listed[n] = true
		h := &Host{Mode: ModeIntercept, Ports: []uint16{443}}
		h.applyProfileDefault(n)
		c.Hosts[n] = h
	}
	return err
}

// ParseHostList reads a plain host list (hosts_file, an old stack's
// api-list): one host pattern a line, blank lines and "#" comments
// skipped, CRLF and upper case accepted, each pattern normalised and
// listed once, in the file's order. Every line that is no pattern is an
// error with path and its line number; the patterns read are returned
// with them.
func ParseHostList(data []byte, path string) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		n, err := hostport.ParsePattern(text)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %q: %w", path, line, text, err))
			continue
		}
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	return names, errors.Join(errs...)
}

// defaultProfiles maps the embedded default's host patterns to their profiles.
var defaultProfiles = sync.OnceValue(func() map[string]string {
	var d struct {
		Hosts map[string]struct {
			Profile string `yaml:"profile"`
		} `yaml:"hosts"`
	}
	if err := yaml.Unmarshal(defaultYAML, &d); err != nil {
		panic("config: the embedded default does not decode: " + err.Error())
	}
	m := map[string]string{}
	for p, h := range d.Hosts {
		if h.Profile != "" {
			m[p] = h.Profile
		}
	}
	return m
})

// DefaultProfile is the profile the embedded default gives the host
// pattern n: its own entry's, else that of a "*." pattern covering it.
func DefaultProfile(n string) string {
	m := defaultProfiles()
	if p, ok := m[n]; ok {
		return p
	}
	for rest := n; ; {
		_, after, ok := strings.Cut(rest, ".")
		if !ok {
			return ""
		}
		if p, ok := m["*."+after]; ok {
			return p
		}
		rest = after
	}
}

// DefaultEntry is a host entry of the embedded default.
type DefaultEntry struct {
	Pattern string
	Profile string
	Ports   []uint16
}

// DefaultEntries are the embedded default's host entries, in its order.
func DefaultEntries() []DefaultEntry {
	var d struct {
		Hosts yaml.Node `yaml:"hosts"`
	}
	if err := yaml.Unmarshal(defaultYAML, &d); err != nil {
		panic("config: the embedded default does not decode: " + err.Error())
	}
	var out []DefaultEntry
	for i := 0; i+1 < len(d.Hosts.Content); i += 2 {
		var h struct {
			Profile string   `yaml:"profile"`
			Ports   []uint16 `yaml:"ports"`
		}
		if err := d.Hosts.Content[i+1].Decode(&h); err != nil {
			panic("config: the embedded default's hosts do not decode: " + err.Error())
		}
		out = append(out, DefaultEntry{Pattern: d.Hosts.Content[i].Value, Profile: h.Profile, Ports: h.Ports})
	}
	return out
}
