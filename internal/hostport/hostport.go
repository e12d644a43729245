// Package hostport parses and normalises the host[:port] strings that name
// an upstream: CONNECT targets, Host headers, absolute URIs, config keys.
//
// Normalising once, here, is what makes policy matching safe: "API.Binance.com.",
// "api.binance.com" and "xn--" forms of the same name all compare equal, and
// spellings that resolvers read as IPv4 ("127.1", "0x7f.1") are refused.
package hostport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// HostPort is a normalised host (a lowercase ASCII name without trailing dot,
// or an IP in its canonical form) and a port.
type HostPort struct {
	Host string
	Port uint16
}

// String returns "host:port", with brackets around an IPv6 host.
func (hp HostPort) String() string { return net.JoinHostPort(hp.Host, strconv.Itoa(int(hp.Port))) }

// Authority returns "host:port", or just the host (bracketed if IPv6) when
// port is defaultPort, as a Host header is written.
func (hp HostPort) Authority(defaultPort uint16) string {
	if hp.Port != defaultPort {
		return hp.String()
	}
	if strings.Contains(hp.Host, ":") {
		return "[" + hp.Host + "]"
	}
	return hp.Host
}

// Parse parses "host", "host:port", "[v6]" or "[v6]:port" and normalises the
// host. A missing port takes defaultPort; if that is 0, a port is required.
func Parse(s string, defaultPort uint16) (HostPort, error) {
	host, portStr, hasPort, err := split(s)
	if err != nil {
		return HostPort{}, err
	}
	port := defaultPort
	if hasPort {
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || p == 0 {
			return HostPort{}, fmt.Errorf("%q: invalid port %q", s, portStr)
		}
		port = uint16(p)
	} else if defaultPort == 0 {
		return HostPort{}, fmt.Errorf("%q: missing port (example: 127.0.0.1:8443)", s)
	}
	h, err := NormalizeHost(host)
	if err != nil {
		return HostPort{}, err
	}
	return HostPort{Host: h, Port: port}, nil
}

func split(s string) (host, port string, hasPort bool, err error) {
	if rest, ok := strings.CutPrefix(s, "["); ok {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return "", "", false, fmt.Errorf("%q: missing ']'", s)
		}
		host, after := rest[:end], rest[end+1:]
		if _, err := netip.ParseAddr(host); err != nil || !strings.Contains(host, ":") {
			return "", "", false, fmt.Errorf("%q: brackets hold no IPv6 address", s)
		}
		if after == "" {
			return host, "", false, nil
		}
		if port, ok := strings.CutPrefix(after, ":"); ok {
			return host, port, true, nil
		}
		return "", "", false, fmt.Errorf("%q: unexpected %q after ']'", s, after)
	}
	switch strings.Count(s, ":") {
	case 0:
		return s, "", false, nil
	case 1:
		host, port, _ := strings.Cut(s, ":")
		return host, port, true, nil
	}
	return s, "", false, nil // a bare IPv6 address; NormalizeHost checks it
}

// parseIP parses h as an IP literal. A host name, which cannot be one, is
// refused before netip.ParseAddr is asked: the error ParseAddr builds is
// an allocation on every request's target.
func parseIP(h string) (netip.Addr, error) {
	if strings.IndexByte(h, ':') < 0 {
		for i := range len(h) {
			if c := h[i]; c != '.' && (c < '0' || c > '9') {
				return netip.Addr{}, errNotIP
			}
		}
	}
	return netip.ParseAddr(h)
}

var errNotIP = errors.New("not an IP literal")

// NormalizeHost returns the canonical form of a host name or IP literal:
// IPs as netip prints them (IPv4-mapped IPv6 unmapped), names lowercased,
// converted to ASCII (IDNA) and without the trailing dot.
func NormalizeHost(h string) (string, error) {
	if h == "" {
		return "", errors.New("empty host")
	}
	if ip, err := parseIP(h); err == nil {
		if ip.Zone() != "" {
			return "", fmt.Errorf("%q: IPv6 zones are not allowed", h)
		}
		return ip.Unmap().String(), nil
	}
	if !utf8.ValidString(h) {
		return "", fmt.Errorf("%q: host name is not valid UTF-8", h)
	}
	name := strings.TrimSuffix(h, ".")
	if !plainASCII(name) && plainASCII(strings.ToLower(name)) {
		name = strings.ToLower(name) // API.Binance.com, or a resolver's 0x20 mixed case: no IDNA needed
	}
	ascii := name
	if !plainASCII(name) { // IDNA mapping is costly; most API hosts need none
		var err error
		if ascii, err = profile.ToASCII(name); err != nil {
			return "", fmt.Errorf("%q: not a valid host name: %w", h, err)
		}
		ascii = strings.ToLower(ascii)
		// The ASCII form must itself be a valid name that maps to itself, so
		// that normalising is idempotent and every later parse agrees.
		if again, err := profile.ToASCII(ascii); err != nil || again != ascii {
			return "", fmt.Errorf("%q: not a valid host name", h)
		}
	}
	if len(ascii) == 0 || len(ascii) > 253 {
		return "", fmt.Errorf("%q: host name must be 1 to 253 characters", h)
	}
	lastStart := 0
	for i := 0; i <= len(ascii); i++ {
		if i < len(ascii) && ascii[i] != '.' {
			if c := ascii[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%q: character %q is not allowed in a host name", h, rune(c))
			}
			continue
		}
		if n := i - lastStart; n == 0 || n > 63 {
			return "", fmt.Errorf("%q: each dot-separated label must be 1 to 63 characters", h)
		}
		if i < len(ascii) {
			lastStart = i + 1
		}
	}
	// A name whose last label is numeric is an IPv4 address to most
	// resolvers and URL parsers ("127.1", "0x7f.0.0.1"); refuse it rather than
	// let it reach one under a name that no policy pattern expects.
	last := ascii[lastStart:]
	if strings.Trim(last, "0123456789") == "" || strings.HasPrefix(last, "0x") && strings.Trim(last[2:], "0123456789abcdef") == "" {
		return "", fmt.Errorf("%q: not a valid IP address or host name", h)
	}
	return ascii, nil
}

// plainASCII reports whether name is already lowercase LDH ASCII without
// punycode labels, which IDNA would return unchanged.
func plainASCII(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return !strings.HasPrefix(name, "xn--") && !strings.Contains(name, ".xn--")
}

var profile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// ParsePattern normalises a host pattern: an exact host, or "*." followed by
// a host that matches every name below it.
func ParsePattern(p string) (string, error) {
	if suffix, ok := strings.CutPrefix(p, "*."); ok {
		h, err := NormalizeHost(suffix)
		if err != nil {
			return "", fmt.Errorf("pattern %q: %w", p, err)
		}
		if _, err := netip.ParseAddr(h); err == nil {
			return "", fmt.Errorf("pattern %q: a wildcard needs a name, not an IP", p)
		}
		if !strings.Contains(h, ".") {
			return "", fmt.Errorf("pattern %q: matches a whole top-level domain; list the hosts instead", p)
		}
		return "*." + h, nil
	}
	if strings.Contains(p, "*") {
		return "", fmt.Errorf("pattern %q: only a leading \"*.\" wildcard is supported", p)
	}
	if strings.Contains(p, ":") && !strings.HasPrefix(p, "[") {
		if _, err := netip.ParseAddr(p); err != nil {
			return "", fmt.Errorf("pattern %q: list the host only; ports go in the entry's ports", p)
		}
	}
	return NormalizeHost(strings.Trim(p, "[]"))
}
