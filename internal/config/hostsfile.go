package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"

	"sluice/internal/hostport"
)

// loadHostsFile adds an intercepted entry for every pattern in HostsFile
// that Hosts does not list already; Hosts wins, so a file can hold the plain
// list and the YAML the exceptions.
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
			errs = append(errs, fmt.Errorf("%s:%d: %w", path, line, err))
			continue
		}
		if listed[n] {
			continue
		}
		listed[n] = true
		c.Hosts[n] = &Host{Mode: ModeIntercept, Ports: []uint16{443}}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	return errors.Join(errs...)
}
