package cache

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// directives is a parsed Cache-Control field (RFC 9111 section 5.2): names
// lowercased, values unquoted. The first occurrence of a directive wins.
type directives map[string]string

// parseCacheControl parses every Cache-Control line of h as one list.
func parseCacheControl(h http.Header) directives {
	d := directives{}
	for _, line := range h.Values("Cache-Control") {
		for len(line) > 0 {
			var item string
			item, line = nextItem(line)
			name, value, _ := strings.Cut(item, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "" {
				continue
			}
			if _, dup := d[name]; !dup {
				d[name] = unquote(strings.TrimSpace(value))
			}
		}
	}
	return d
}

// nextItem splits off the first comma-separated item, respecting quotes.
func nextItem(s string) (item, rest string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				return s[:i], s[i+1:]
			}
		}
	}
	return s, ""
}

func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		if u, err := strconv.Unquote(v); err == nil {
			return u
		}
		return v[1 : len(v)-1]
	}
	return v
}

func (d directives) has(name string) bool { _, ok := d[name]; return ok }

// seconds returns a delta-seconds directive. ok is false when it is absent;
// an invalid value reads as 0 (so it makes a response stale, not fresh),
// and values beyond 2^31 are capped as RFC 9111 section 1.2.2 says.
func (d directives) seconds(name string) (time.Duration, bool) {
	v, present := d[name]
	if !present {
		return 0, false
	}
	if v == "" || strings.TrimLeft(v, "0123456789") != "" {
		return 0, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > 1<<31 {
		n = 1 << 31
	}
	return time.Duration(n) * time.Second, true
}

// httpDateLayouts are RFC 9110 §5.6.7's IMF-fixdate and the two obsolete
// forms a recipient must still accept.
var httpDateLayouts = []string{http.TimeFormat, "Monday, 02-Jan-06 15:04:05 GMT", time.ANSIC}

// parseHTTPDate parses an HTTP-date exactly; ok is false for a missing or
// bad one. time.Parse alone is lenient (a one-digit hour, runs of spaces),
// and a date two parsers read differently must not extend a freshness.
func parseHTTPDate(v string) (time.Time, bool) {
	for _, layout := range httpDateLayouts {
		if t, err := time.Parse(layout, v); err == nil && t.Format(layout) == v {
			return t, true
		}
	}
	return time.Time{}, false
}
