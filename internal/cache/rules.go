package cache

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sluice/internal/config"
)

// Rules is one host's compiled cache behaviour. It is immutable.
type Rules struct {
	mode  config.CacheMode
	rules []rule
	// stale is how long past expiry an entry may be served when the upstream fails.
	stale time.Duration
}

type rule struct {
	prefix   string
	re       *regexp.Regexp
	get      bool
	head     bool
	ttl      time.Duration
	ignore   []string // sorted
	public   bool
	statuses []int
}

// Compile turns a host's cache mode and rules (validated by config) into Rules.
func Compile(mode config.CacheMode, rs []config.CacheRule, stale time.Duration) (*Rules, error) {
	out := &Rules{mode: mode, stale: stale}
	for i, r := range rs {
		cr := rule{prefix: r.Path, ttl: r.TTL.D(), ignore: r.IgnoreParams, public: r.Public, statuses: r.Statuses}
		if r.PathRegex != "" {
			re, err := regexp.Compile(r.PathRegex)
			if err != nil {
				return nil, config.Under(err, strconv.Itoa(i), "path_regex")
			}
			cr.re = re
		}
		cr.get = slices.Contains(r.Methods, http.MethodGet)
		cr.head = slices.Contains(r.Methods, http.MethodHead)
		out.rules = append(out.rules, cr)
	}
	return out, nil
}

// Enabled reports whether anything is cached for the host.
func (rs *Rules) Enabled() bool { return rs != nil && rs.mode != config.CacheOff }

// match returns the first rule for r, or nil.
func (rs *Rules) match(r *http.Request) *rule {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return nil
	}
	for i := range rs.rules {
		ru := &rs.rules[i]
		if r.Method == http.MethodGet && !ru.get || r.Method == http.MethodHead && !ru.head {
			continue
		}
		if ru.re != nil && ru.re.MatchString(r.URL.Path) || ru.re == nil && strings.HasPrefix(r.URL.Path, ru.prefix) {
			return ru
		}
	}
	return nil
}

func (ru *rule) storable(status int) bool { return slices.Contains(ru.statuses, status) }

// Key returns the cache key of a request to host: method (HEAD shares GET's
// entries), host, path and the query with its parameters sorted, less the
// ignored ones, so that parameter order does not split entries, then the
// content codings the client accepts.
func Key(method, host string, u *url.URL, ignore []string, codings string) string {
	if method == http.MethodHead {
		method = http.MethodGet
	}
	path, query := u.EscapedPath(), canonicalQuery(u.RawQuery, ignore)
	var b strings.Builder
	b.Grow(len(method) + 1 + len(host) + len(path) + 1 + len(query) + 1 + len(codings))
	b.WriteString(method)
	b.WriteByte(' ')
	b.WriteString(host)
	b.WriteString(path)
	if query != "" {
		b.WriteByte('?')
		b.WriteString(query)
	}
	b.WriteByte(0)
	b.WriteString(codings)
	return b.String()
}

// canonicalQuery sorts the parameters by name (keeping the order of
// repeated ones, which can matter) and drops the ignored ones. Parameters
// are compared in their decoded form, so "%41" and "A" are one key.
func canonicalQuery(raw string, ignore []string) string {
	if raw == "" || alreadyCanonical(raw, ignore) {
		return raw
	}
	type param struct{ k, v string }
	var ps []param
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		if _, skip := slices.BinarySearch(ignore, k); skip {
			continue
		}
		ps = append(ps, param{k, v})
	}
	slices.SortStableFunc(ps, func(a, b param) int { return strings.Compare(a.k, b.k) })
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p.k))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p.v))
	}
	return b.String()
}

// alreadyCanonical reports whether raw is what canonicalQuery would
// return anyway (names in order, nothing escaped, nothing ignored), the
// common case of a bot that builds its query the same way every time.
func alreadyCanonical(raw string, ignore []string) bool {
	if strings.ContainsAny(raw, "%+") || raw[0] == '&' || raw[len(raw)-1] == '&' || strings.Contains(raw, "&&") {
		return false
	}
	prev := ""
	for q := raw; q != ""; {
		var part string
		part, q, _ = strings.Cut(q, "&")
		name, value, hasValue := strings.Cut(part, "=")
		if !hasValue || name < prev || url.QueryEscape(name) != name || url.QueryEscape(value) != value {
			return false
		}
		if _, skip := slices.BinarySearch(ignore, name); skip {
			return false
		}
		prev = name
	}
	return true
}

// Describe says how r would be cached, for sluice why.
func (rs *Rules) Describe(r *http.Request) string {
	if !rs.Enabled() {
		return "not cached (cache: off)"
	}
	if ru := rs.match(r); ru != nil {
		what := ru.prefix
		if ru.re != nil {
			what = ru.re.String()
		}
		return fmt.Sprintf("cached for %s, whatever the upstream says (cache rule %s)", ru.ttl, what)
	}
	if rs.mode == config.CacheStandard {
		return "cached as the answer's headers allow (RFC 9111; no cache rule matches)"
	}
	return "not cached (no cache rule matches)"
}
