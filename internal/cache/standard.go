package cache

import (
	"bytes"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"sluice/internal/obs"
)

// stdMeta is what a standard-mode entry keeps to compute its age and
// freshness (RFC 9111 section 4.2) and to revalidate it (section 4.3).
type stdMeta struct {
	requestTime, responseTime time.Time
	dateValue                 time.Time
	ageValue                  time.Duration
	lifetime                  time.Duration
	// noCache: stored, but revalidated before every use.
	noCache bool
	// mustRevalidate: never served stale (must-revalidate, proxy-revalidate, s-maxage).
	mustRevalidate bool
	// staleIfError is the response's own stale-if-error (RFC 5861), if any.
	staleIfError time.Duration
	// staleWhileRevalidate is its stale-while-revalidate (RFC 5861): how
	// long past its freshness it answers while it is revalidated.
	staleWhileRevalidate time.Duration
	etag                 string
	lastModified         string
}

// allowsStale reports whether the entry may be served stale after an
// upstream failure. Rules-mode entries (nil meta) always may.
func (m *stdMeta) allowsStale() bool { return m == nil || !m.mustRevalidate && !m.noCache }

// currentAge is RFC 9111 section 4.2.3's current_age.
func (m *stdMeta) currentAge(now time.Time) time.Duration {
	apparent := max(m.responseTime.Sub(m.dateValue), 0)
	corrected := m.ageValue + m.responseTime.Sub(m.requestTime)
	return max(apparent, corrected) + max(now.Sub(m.responseTime), 0)
}

// variants is the index entry stored under a URL's primary key: the
// request fields its latest response varies on, and the variant keys in use.
type variants struct {
	names []string // canonical, sorted; ["*"] for Vary: *
	keys  map[string]bool
}

func primaryKey(host string, u *url.URL) string {
	return "STD " + host + u.RequestURI()
}

func variantKey(primary string, names []string, h http.Header) string {
	var b strings.Builder
	b.WriteString(primary)
	b.WriteByte(0)
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(':')
		b.WriteString(normalizeFieldValue(h.Values(n)))
		b.WriteByte(0)
	}
	return b.String()
}

// normalizeFieldValue joins a field's lines as one list with the
// whitespace around commas removed, so equivalent spellings match.
func normalizeFieldValue(vs []string) string {
	var parts []string
	for _, v := range vs {
		for p := range strings.SplitSeq(v, ",") {
			parts = append(parts, strings.TrimSpace(p))
		}
	}
	return strings.Join(parts, ",")
}

func varyNames(h http.Header) []string {
	var names []string
	for _, v := range h.Values("Vary") {
		for n := range strings.SplitSeq(v, ",") {
			if n = strings.TrimSpace(n); n == "*" {
				return []string{"*"}
			} else if n != "" {
				names = append(names, http.CanonicalHeaderKey(n))
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// heuristicStatus lists the status codes that are cacheable by default
// (RFC 9110 section 15.1).
func heuristicStatus(status int) bool {
	switch status {
	case 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// understoodStatus lists the final status codes whose caching rules sluice
// implements (RFC 9110), for the must-understand directive.
func understoodStatus(status int) bool {
	return status >= 200 && status <= 206 || status >= 300 && status <= 308 ||
		status >= 400 && status <= 417 || status == 421 || status == 422 || status == 426 || status >= 500 && status <= 505
}

// storable is RFC 9111 section 3 for a shared cache.
func storable(r *http.Request, reqCC directives, status int, h http.Header) bool {
	if r.Method != http.MethodGet || status < 200 || status == http.StatusPartialContent || status == http.StatusNotModified {
		return false
	}
	cc := parseCacheControl(h)
	switch {
	case reqCC.has("no-store"), cc.has("no-store"), cc.has("private"):
		return false
	case r.Header.Get("Authorization") != "" && !cc.has("must-revalidate") && !cc.has("public") && !cc.has("s-maxage"):
		return false
	case r.Header.Get("Cookie") != "" && !cc.has("public") && !cc.has("s-maxage"):
		// An answer to a request with a cookie is that client's unless the
		// origin says it is for everyone.
		return false
	case slices.Equal(varyNames(h), []string{"*"}):
		return false
	case cc.has("must-understand") && !understoodStatus(status):
		return false
	}
	return cc.has("public") || cc.has("max-age") || cc.has("s-maxage") || h.Get("Expires") != "" || heuristicStatus(status)
}

// newStdMeta computes the freshness of a response received at responseTime
// for a request sent at requestTime (RFC 9111 section 4.2.1).
func newStdMeta(status int, h http.Header, requestTime, responseTime time.Time) *stdMeta {
	cc := parseCacheControl(h)
	m := &stdMeta{requestTime: requestTime, responseTime: responseTime,
		noCache:        cc.has("no-cache"),
		mustRevalidate: cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("s-maxage"),
		etag:           h.Get("ETag"), lastModified: h.Get("Last-Modified")}
	date, ok := parseHTTPDate(h.Get("Date"))
	if !ok {
		date = responseTime
	}
	m.dateValue = date
	m.ageValue = ageOf(h.Values("Age"))
	if d, ok := cc.seconds("stale-if-error"); ok {
		m.staleIfError = d
	}
	if d, ok := cc.seconds("stale-while-revalidate"); ok {
		m.staleWhileRevalidate = d
	}
	if d, ok := cc.seconds("s-maxage"); ok {
		m.lifetime = d
	} else if d, ok := cc.seconds("max-age"); ok {
		m.lifetime = d
	} else if exps := h.Values("Expires"); len(exps) > 0 {
		// An invalid Expires, or two, means already expired (RFC 9111 §5.3).
		if t, ok := parseHTTPDate(exps[0]); ok && len(exps) == 1 {
			m.lifetime = max(t.Sub(date), 0)
		}
	} else if lm, ok := parseHTTPDate(m.lastModified); ok && (heuristicStatus(status) || cc.has("public")) {
		m.lifetime = max(date.Sub(lm)/10, 0) // the customary 10% heuristic
	}
	return m
}

// ageOf reads Age (RFC 9111 §5.1): the first member that is a
// non-negative integer, capped at 2^31 seconds; invalid members are ignored.
func ageOf(lines []string) time.Duration {
	for _, line := range lines {
		for a := range strings.SplitSeq(line, ",") {
			a = strings.TrimSpace(a)
			if a == "" || strings.Trim(a, "0123456789") != "" {
				continue
			}
			n, err := strconv.ParseInt(a, 10, 64)
			if err != nil { // more digits than an int64: past the cap
				n = 1 << 31
			}
			return time.Duration(min(n, 1<<31)) * time.Second
		}
	}
	return 0
}

// usable reports whether a stored entry may answer r without contacting
// the upstream (RFC 9111 section 4, with the request's directives).
func usable(e *entry, r *http.Request, reqCC directives, now time.Time) bool {
	m := e.std
	if m.noCache || reqCC.has("no-cache") || len(reqCC) == 0 && hasToken(r.Header.Values("Pragma"), "no-cache") {
		return false
	}
	age := m.currentAge(now)
	left := m.lifetime - age
	if d, ok := reqCC.seconds("max-age"); ok && age > d {
		return false
	}
	if d, ok := reqCC.seconds("min-fresh"); ok && left < d {
		return false
	}
	if left > 0 {
		return true
	}
	if v, ok := reqCC["max-stale"]; ok && !m.mustRevalidate {
		d, _ := reqCC.seconds("max-stale")
		return v == "" || -left <= d
	}
	return false
}

// revalidatesInBackground reports whether a stale entry may answer r while
// it is revalidated (RFC 5861 section 3): within its stale-while-revalidate,
// and unless the entry or the request forbid stale answers.
func revalidatesInBackground(e *entry, r *http.Request, reqCC directives, now time.Time) bool {
	m := e.std
	if m.staleWhileRevalidate <= 0 || m.noCache || m.mustRevalidate || reqCC.has("no-cache") ||
		len(reqCC) == 0 && hasToken(r.Header.Values("Pragma"), "no-cache") {
		return false
	}
	age := m.currentAge(now)
	if d, ok := reqCC.seconds("max-age"); ok && age > d {
		return false
	}
	if _, ok := reqCC.seconds("min-fresh"); ok {
		return false
	}
	return age-m.lifetime <= m.staleWhileRevalidate
}

func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for p := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), token) {
				return true
			}
		}
	}
	return false
}

// unsafeMethod: a successful response to one invalidates what is stored
// for its URL (RFC 9111 section 4.4).
func unsafeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return true
}

func (c *Cache) handleStandard(w http.ResponseWriter, r *http.Request, host string, rules *Rules, next http.Handler) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if !unsafeMethod(r.Method) {
			c.bypass(w, r, next)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		c.bypass(sw, r, next)
		if sw.status < 400 {
			c.invalidate(host, r.URL)
			for _, f := range []string{"Location", "Content-Location"} {
				if u, err := r.URL.Parse(sw.Header().Get(f)); err == nil && sw.Header().Get(f) != "" && u.Host == r.URL.Host {
					c.invalidate(host, u)
				}
			}
		}
		return
	}
	reqCC := parseCacheControl(r.Header)
	now := c.opts.Now()
	primary := primaryKey(host, r.URL)
	key := primary + "\x00" // the key before the Vary of a response is known
	var e *entry
	if idx := c.get(primary, now); idx != nil && idx.index != nil && !slices.Equal(idx.index.names, []string{"*"}) {
		key = variantKey(primary, idx.index.names, r.Header)
		e = c.get(key, now)
	}
	if e != nil && usable(e, r, reqCC, now) {
		c.serveStandard(w, r, e, "HIT", now)
		return
	}
	if reqCC.has("only-if-cached") {
		obs.WriteError(w, r, &obs.Error{Status: http.StatusGatewayTimeout, Msg: "not in cache", Host: host,
			Detail: "the request said only-if-cached and no usable response is stored"})
		return
	}
	if r.Method == http.MethodHead {
		c.bypass(w, r, next)
		return
	}
	old := e
	var requestTime time.Time
	prepare := func(out *http.Request) {
		requestTime = c.opts.Now()
		if old != nil && old.std.etag != "" {
			out.Header.Set("If-None-Match", old.std.etag)
		}
		if old != nil && old.std.lastModified != "" {
			out.Header.Set("If-Modified-Since", old.std.lastModified)
		}
	}
	store := func(f *fetched) *entry {
		if f.status == http.StatusNotModified && old != nil {
			return c.freshen(old, f, requestTime)
		}
		if f.tooLarge || !storable(r, reqCC, f.status, f.header) {
			return nil
		}
		names := varyNames(f.header)
		// Set-Cookie is never stored: a cookie is one client's, not the
		// resource's. The client whose request fetched it still gets it.
		f.setCookie = f.header.Values("Set-Cookie")
		h := f.header.Clone()
		h.Del("Set-Cookie")
		e := &entry{key: variantKey(primary, names, r.Header), status: f.status, header: h, body: f.body,
			stored: f.at, std: newStdMeta(f.status, h, requestTime, f.at)}
		e.expires = e.stored.Add(e.std.lifetime - e.std.currentAge(f.at))
		e.dead = e.expires.Add(max(rules.stale, e.std.staleIfError, e.std.staleWhileRevalidate)) // kept for revalidation and stale answers
		if e.std.etag != "" || e.std.lastModified != "" {
			e.dead = e.dead.Add(24 * time.Hour)
		}
		c.index(primary, names, e.key, e.dead)
		return e
	}
	if old != nil && revalidatesInBackground(old, r, reqCC, now) {
		c.refresh(r, key, next, nil, prepare, store)
		c.serveStandard(w, r, old, "STALE", now)
		return
	}
	res, ok := c.fetch(w, r, key, next, nil, prepare, store)
	if !ok {
		return
	}
	if res.leader != r && (res.entry == nil && !res.failed() || res.varies(r)) {
		// A response the cache may not store (private, no-store, ...) is
		// not shared either, nor one chosen by another client's request fields.
		c.bypass(w, r, next)
		return
	}
	now = c.opts.Now()
	if res.failed() && old != nil && old.std.allowsStale() && now.Before(old.expires.Add(staleFor(old, rules.stale))) {
		c.serveStandard(w, r, old, "STALE", now)
		return
	}
	if res.entry != nil {
		if res.leader == r {
			for _, v := range res.setCookie {
				w.Header().Add("Set-Cookie", v)
			}
		}
		c.serveStandard(w, r, res.entry, "MISS", now)
		return
	}
	c.deliver(w, r, res, nil, 0)
}

// staleFor is how long past its freshness a standard-mode entry may be
// served when the upstream fails: sluice's window (stale_if_error) or the
// response's own stale-if-error, whichever is longer, for a response that
// was fresh once; for one that never was, only what its origin allowed.
func staleFor(e *entry, window time.Duration) time.Duration {
	if !e.expires.After(e.stored) {
		return e.std.staleIfError
	}
	return max(window, e.std.staleIfError)
}

// varies reports whether the fetched response varies on request fields in
// which r differs from the request that fetched it.
func (f *fetched) varies(r *http.Request) bool {
	names := varyNames(f.header)
	if len(names) == 0 {
		return false
	}
	return slices.Equal(names, []string{"*"}) || variantKey("", names, r.Header) != variantKey("", names, f.leader.Header)
}

// freshen applies a 304 to the stored entry (RFC 9111 section 4.3.4): its
// header fields replace the stored ones, and its freshness starts again.
func (c *Cache) freshen(old *entry, f *fetched, requestTime time.Time) *entry {
	h := old.header.Clone()
	for k, vs := range f.header {
		switch k { // fields that describe the stored body, which a 304 does not replace; a cookie is never stored
		case "Content-Length", "Content-Encoding", "Content-Md5", "Content-Range", "Etag", "Transfer-Encoding", "Set-Cookie":
			continue
		}
		h[k] = vs
	}
	e := &entry{key: old.key, status: old.status, header: h, body: old.body, stored: f.at,
		std: newStdMeta(old.status, h, requestTime, f.at)}
	e.expires = e.stored.Add(e.std.lifetime - e.std.currentAge(f.at))
	e.dead = later(old.dead, e.expires.Add(24*time.Hour))
	c.fills.WithLabelValues("revalidated").Inc()
	return e
}

// index records that key is a variant of primary, varying on names.
func (c *Cache) index(primary string, names []string, key string, dead time.Time) {
	c.mu.Lock()
	var idx *entry
	if e, ok := c.entries.Peek(primary); ok {
		idx = e
	}
	c.mu.Unlock()
	if idx != nil && slices.Equal(idx.index.names, names) {
		c.mu.Lock()
		idx.index.keys[key] = true
		idx.dead = later(idx.dead, dead)
		c.mu.Unlock()
		return
	}
	if idx != nil { // the resource now varies differently: old variants are unreachable
		for k := range idx.index.keys {
			c.remove(k)
		}
	}
	c.put(&entry{key: primary, index: &variants{names: names, keys: map[string]bool{key: true}}, dead: dead})
}

// invalidate removes every stored variant of u.
func (c *Cache) invalidate(host string, u *url.URL) {
	primary := primaryKey(host, u)
	c.mu.Lock()
	e, ok := c.entries.Peek(primary)
	var keys []string
	if ok {
		for k := range e.index.keys {
			keys = append(keys, k)
		}
		c.entries.Remove(primary)
	}
	c.mu.Unlock()
	for _, k := range keys {
		c.remove(k)
	}
}

// serveStandard answers from e. A stored 200 is served with
// http.ServeContent, which answers the client's own conditional (304) and
// Range (206) requests from it.
func (c *Cache) serveStandard(w http.ResponseWriter, r *http.Request, e *entry, result string, now time.Time) {
	if e.status != http.StatusOK {
		c.serve(w, r, e, result, now)
		return
	}
	c.count(r, result)
	h := w.Header()
	for k, vs := range e.header {
		h[k] = vs
	}
	h["X-Cache"] = xCache[result]
	h["Age"] = ageValue(e.age(now))
	if h.Get("Content-Type") == "" {
		h["Content-Type"] = nil // stored without one: do not let ServeContent sniff one
	}
	lm, _ := parseHTTPDate(e.std.lastModified)
	http.ServeContent(w, r, "", lm, bytes.NewReader(e.body))
}

// statusWriter notes the status of a response passing through.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
