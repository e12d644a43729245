package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/obs"
)

// Handle answers r from the cache of host (its "host:port") when rules
// allow, or fetches it through next (the rest of the chain, which reaches
// the upstream) and stores the answer.
func (c *Cache) Handle(w http.ResponseWriter, r *http.Request, host string, rules *Rules, next http.Handler) {
	switch {
	case !rules.Enabled():
		next.ServeHTTP(w, r)
	case rules.mode == config.CacheStandard:
		c.handleStandard(w, r, host, rules, next)
	default:
		c.handleRules(w, r, host, rules, next)
	}
}

func (c *Cache) handleRules(w http.ResponseWriter, r *http.Request, host string, rules *Rules, next http.Handler) {
	ru := rules.match(r)
	if ru == nil || r.Header.Get("Range") != "" || !ru.public && obs.HasCredentials(r) {
		c.bypass(w, r, next)
		return
	}
	// Rules ignore Vary, but not the encoding: a gzip body stored for one
	// client must not reach another that cannot decode it.
	key := Key(r.Method, host, r.URL, ru.ignore, acceptedCodings(r.Header))
	now := c.opts.Now()
	e := c.get(key, now)
	switch {
	case e != nil && e.pass && now.Before(e.expires):
		c.bypass(w, r, next)
		return
	case e != nil && !e.pass && now.Before(e.expires.Add(-e.ahead())):
		c.serve(w, r, e, "HIT", now) // the common case: nothing more to prepare
		return
	}
	var ff *fleetFill
	if c.opts.Shared != nil && !obs.HasCredentials(r) {
		ff = &fleetFill{ttl: ru.ttl, stale: rules.stale}
	}
	store := func(f *fetched) *entry {
		if f.tooLarge {
			return &entry{key: key, pass: true, expires: f.at.Add(ru.ttl), dead: f.at.Add(ru.ttl)}
		}
		if !ru.storable(f.status) {
			return nil
		}
		// Set-Cookie is never stored: a cookie is one client's, not the
		// data's. The client whose request fetched it still gets it.
		f.setCookie = f.header.Values("Set-Cookie")
		h := f.header.Clone()
		h.Del("Set-Cookie")
		e := &entry{key: key, status: f.status, header: h, body: f.body, took: f.took, stored: f.at, expires: f.at.Add(ru.ttl)}
		e.dead = e.expires.Add(max(rules.stale, c.grace(e)))
		return e
	}
	switch {
	case e != nil && !e.pass && now.Before(e.expires):
		// Close to its expiry: refreshed in the background, so that the
		// next copy is there when this one expires.
		c.refresh(r, key, next, ff, nil, store)
		c.serve(w, r, e, "REFRESH", now)
		return
	case e != nil && !e.pass && now.Before(e.expires.Add(c.grace(e))) && r.Method == http.MethodGet:
		// Just expired: the copy, no older than its TTL and one round
		// trip, answers while the refresh runs.
		c.refresh(r, key, next, ff, nil, store)
		c.serve(w, r, e, "STALE", now)
		return
	case r.Method == http.MethodHead:
		// A HEAD miss cannot fill a GET entry: pass it on.
		c.bypass(w, r, next)
		return
	}
	res, ok := c.fetch(w, r, key, next, ff, nil, store)
	if !ok {
		return // the client went away while waiting
	}
	c.deliver(w, r, res, e, rules.stale)
}

// codingNames are the content codings upstreams use, in the order the key
// names them.
var codingNames = [...]string{"br", "deflate", "gzip", "zstd"}

// codingSets names each set of codingNames (bit i: codingNames[i]) as the
// key writes it, so that naming one allocates nothing.
var codingSets = func() (sets [1 << len(codingNames)]string) {
	for set := range sets {
		var names []string
		for i, name := range codingNames {
			if set&(1<<i) != 0 {
				names = append(names, name)
			}
		}
		sets[set] = strings.Join(names, ",")
	}
	sets[0] = "identity"
	return sets
}()

// acceptedCodings names the content codings a client accepts, from the
// ones upstreams use, in a fixed order: the part of the key that keeps
// differently encoded answers apart. A coding's first mention decides.
func acceptedCodings(h http.Header) string {
	var seen, accepted int
	for _, v := range h.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			name, params, _ := strings.Cut(part, ";")
			name = strings.TrimSpace(name)
			for i, coding := range codingNames {
				if seen&(1<<i) == 0 && strings.EqualFold(name, coding) {
					seen |= 1 << i
					if !zeroQ(params) {
						accepted |= 1 << i
					}
				}
			}
		}
	}
	return codingSets[accepted]
}

// zeroQ reports whether a coding's parameters give it q=0, "not
// acceptable" (RFC 9110 §12.4.2); any other weight accepts it.
func zeroQ(params string) bool {
	for param := range strings.SplitSeq(params, ";") {
		name, value, _ := strings.Cut(param, "=")
		if strings.EqualFold(strings.TrimSpace(name), "q") {
			q, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			return err == nil && q == 0
		}
	}
	return false
}

// deliver answers with a fetch's result: the response itself, or the stale
// entry old when the upstream failed and old is within the stale window.
func (c *Cache) deliver(w http.ResponseWriter, r *http.Request, res *fetched, old *entry, stale time.Duration) {
	now := c.opts.Now()
	if res.failed() && old != nil && !old.pass && old.std.allowsStale() && now.Before(old.expires.Add(stale)) {
		c.serve(w, r, old, "STALE", now)
		return
	}
	if res.tooLarge {
		c.bypass(w, r, res.next)
		return
	}
	if res.fromFleet {
		c.serve(w, r, res.entry, "HIT", now) // no upstream call: another instance made it
		return
	}
	if res.entry != nil && !res.entry.pass {
		if res.leader == r {
			// Set-Cookie goes only to the client whose request fetched it.
			for _, v := range res.setCookie {
				w.Header().Add("Set-Cookie", v)
			}
		}
		c.serve(w, r, res.entry, "MISS", now)
		return
	}
	c.count(r, "MISS")
	if res.err != nil {
		decision.From(r.Context()).Err = res.err
	}
	h := w.Header()
	for k, vs := range res.header {
		if k != "Set-Cookie" || res.leader == r {
			h[k] = vs
		}
	}
	h.Set("X-Cache", "MISS")
	h.Set("Content-Length", strconv.Itoa(len(res.body)))
	w.WriteHeader(res.status)
	if r.Method != http.MethodHead {
		w.Write(res.body)
	}
}

// bypass sends r upstream without the cache.
func (c *Cache) bypass(w http.ResponseWriter, r *http.Request, next http.Handler) {
	c.count(r, "BYPASS")
	w.Header()["X-Cache"] = xCache["BYPASS"]
	next.ServeHTTP(w, r)
}

// serve answers from e; HEAD gets the headers only.
func (c *Cache) serve(w http.ResponseWriter, r *http.Request, e *entry, result string, now time.Time) {
	c.count(r, result)
	h := w.Header()
	for k, vs := range e.header {
		h[k] = vs // shared, never modified: a stored entry is immutable
	}
	h["X-Cache"] = xCache[result]
	h["Age"] = ageValue(e.age(now))
	if e.contentLength != nil {
		h["Content-Length"] = e.contentLength
	} else {
		h["Content-Length"] = []string{strconv.Itoa(len(e.body))}
	}
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		w.Write(e.body)
	}
}

// ageValues hold the Age values of the first minutes, so that setting one
// allocates nothing in the common case.
var ageValues = func() (v [600][]string) {
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

// ageValue is the Age header's value for age, in whole seconds.
func ageValue(age time.Duration) []string {
	if s := int64(age / time.Second); s < int64(len(ageValues)) {
		return ageValues[max(s, 0)]
	}
	return []string{strconv.FormatInt(int64(age/time.Second), 10)}
}

// xCache holds the X-Cache values, so that setting one allocates nothing.
var xCache = map[string][]string{"HIT": {"HIT"}, "REFRESH": {"REFRESH"}, "MISS": {"MISS"}, "STALE": {"STALE"}, "BYPASS": {"BYPASS"}}

// count records a request's cache result in the metrics and the access log.
func (c *Cache) count(r *http.Request, result string) {
	var res decision.CacheResult
	switch result {
	case "HIT", "REFRESH":
		res = decision.Hit
	case "MISS":
		res = decision.Miss
	case "STALE":
		res = decision.Stale
	default:
		res = decision.Bypass
	}
	c.results[res.String()].Inc()
	decision.From(r.Context()).Cache = res
}

// age is how old the response is, as the Age header reports it.
func (e *entry) age(now time.Time) time.Duration {
	if e.std != nil {
		return e.std.currentAge(now)
	}
	return max(now.Sub(e.stored), 0)
}

// fetched is the outcome of one upstream fetch, shared by its waiters.
type fetched struct {
	status    int
	header    http.Header
	body      []byte
	setCookie []string
	at        time.Time
	tooLarge  bool
	// err says why a fetch produced no upstream response.
	err error
	// entry is what was stored (nil if nothing was).
	entry *entry
	// leader is the request that started the fetch.
	leader *http.Request
	// rec is what the fetch's stages recorded (decision.Detach's copy of
	// the leader's record), for the lines of the requests it answers.
	rec  *decision.Record
	next http.Handler
	// fromFleet: the entry came from the fleet cache, not the upstream.
	fromFleet bool
	// took is how long the upstream took to answer (with its budget wait).
	took time.Duration
}

// failed reports whether the upstream failed: sluice could not reach it, or
// it answered 5xx, 429 or 418 (an exchange's rate limit or IP ban).
func (f *fetched) failed() bool {
	return f.status >= 500 || f.status == http.StatusTooManyRequests || f.status == http.StatusTeapot
}

type flight struct {
	done chan struct{}
	res  *fetched
	// interim carries the fill's 1xx responses (103 Early Hints, ...) to
	// the leader, whose own goroutine writes them: the fill runs detached
	// and must not touch a writer its client may already have left.
	interim chan interimResponse
}

type interimResponse struct {
	status int
	header http.Header
}

// fetch coalesces concurrent fetches of key: the first request starts one
// detached upstream fetch, and it and every later request for key wait for
// its result. ff (nil: none) makes the fill look in the fleet cache first
// and share what it stores. prepare (optional) adds the cache's own validators to the
// upstream request; store decides what to keep. ok is false when r's
// client gave up waiting.
func (c *Cache) fetch(w http.ResponseWriter, r *http.Request, key string, next http.Handler, ff *fleetFill, prepare func(*http.Request), store func(*fetched) *entry) (res *fetched, ok bool) {
	f, joined := c.flight(key)
	if joined {
		c.coalesced.Inc()
	} else {
		c.fill(f, key, r, next, ff, prepare, store)
	}
	interim := f.interim
	if joined {
		interim = nil // interim responses answer the request that asked for them
	}
	for {
		select {
		case ir := <-interim:
			writeInterim(w, ir)
		case <-f.done:
			// select picks among ready cases at random: 1xx responses the
			// fill sent before it ended may still be buffered.
			for len(interim) > 0 {
				writeInterim(w, <-interim)
			}
			if f.res.rec != nil {
				decision.From(r.Context()).Report(f.res.rec, !joined)
			}
			return f.res, true
		case <-r.Context().Done():
			rec := decision.From(r.Context())
			rec.Status, rec.Reason = obs.StatusClientClosed, "client closed the request while the cache was filling"
			return nil, false
		}
	}
}

// flight returns key's fill in progress (joined), or a new one that the
// caller must run.
func (c *Cache) flight(key string) (f *flight, joined bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, joined = c.flights[key]; !joined {
		f = &flight{done: make(chan struct{}), interim: make(chan interimResponse, maxInterim)}
		c.flights[key] = f
	}
	return f, joined
}

// refresh starts a background fill of key with r's request, unless one is
// in progress: whoever asks meanwhile gets the current copy, and a miss
// joins the fill. prepare (nil: none) adds validators.
func (c *Cache) refresh(r *http.Request, key string, next http.Handler, ff *fleetFill, prepare func(*http.Request), store func(*fetched) *entry) {
	if f, joined := c.flight(key); !joined {
		c.refreshes.Inc()
		c.fill(f, key, r, next, ff, prepare, store)
	}
}

// ahead is how long before its expiry a hit refreshes a rules-mode entry:
// twice the round trip of the fill that stored it (a bot that polls once
// per TTL, as the one whose poll filled it, comes back about one round
// trip before the expiry, and must land inside), at most a quarter of the
// TTL, so that upstream calls stay about one per TTL.
func (e *entry) ahead() time.Duration {
	return min(2*e.took, e.expires.Sub(e.stored)/4)
}

// grace is how long past its expiry a rules-mode entry still answers while
// it is refreshed: cache.refresh_grace, else the round trip of the fill
// that stored it.
func (c *Cache) grace(e *entry) time.Duration {
	if c.opts.RefreshGrace >= 0 {
		return c.opts.RefreshGrace
	}
	return e.took
}

// maxInterim is how many 1xx responses a fill passes on; net/http's
// transport accepts no more than five before a final response.
const maxInterim = 5

// writeInterim sends a 1xx response with its own header fields, leaving
// the ones already set for the final response as they were.
func writeInterim(w http.ResponseWriter, ir interimResponse) {
	h := w.Header()
	saved := h.Clone()
	clear(h)
	for k, vs := range ir.header {
		h[k] = vs
	}
	w.WriteHeader(ir.status)
	clear(h)
	for k, vs := range saved {
		h[k] = vs
	}
}

// fill starts flight f's fetch with r's request, on a context detached
// from the client's, so that its client leaving does not cancel it for the
// other waiters. What the fetch needs of r is copied here, on r's
// goroutine, which goes on (a refresh answers at once).
func (c *Cache) fill(f *flight, key string, r *http.Request, next http.Handler, ff *fleetFill, prepare func(*http.Request), store func(*fetched) *entry) {
	detached, rec := decision.Detach(r.Context())
	ctx, cancel := context.WithTimeout(detached, c.opts.FetchTimeout)
	out := r.Clone(ctx)
	go func() {
		defer cancel()
		c.run(ctx, f, key, r, out, rec, next, ff, prepare, store)
	}()
}

// run performs flight f's fetch of out (the clone of the leader r).
func (c *Cache) run(ctx context.Context, f *flight, key string, r, out *http.Request, rec *decision.Record, next http.Handler, ff *fleetFill, prepare func(*http.Request), store func(*fetched) *entry) {
	if ff != nil {
		if e := c.fromFleet(ctx, key, ff); e != nil {
			c.fills.WithLabelValues("fleet").Inc()
			c.put(e)
			c.land(f, key, &fetched{status: e.status, header: e.header, body: e.body, at: e.stored, entry: e, leader: r, next: next, fromFleet: true})
			return
		}
	}
	out.Method = http.MethodGet
	out.Body, out.ContentLength = http.NoBody, 0
	// The fill must bring a whole response to store, whatever this one
	// client made conditional or partial; the client's conditions are
	// evaluated against the stored response afterwards.
	for _, h := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range"} {
		out.Header.Del(h)
	}
	if prepare != nil {
		prepare(out)
	}
	rw := &recorder{header: http.Header{}, limit: c.opts.MaxObjectBytes, interim: f.interim}
	start := c.opts.Now()
	aborted := c.serveInto(rw, out, next, key)
	res := rw.result(aborted)
	res.leader, res.next, res.at = r, next, c.opts.Now()
	res.took = res.at.Sub(start)
	res.rec = rec
	res.entry = store(res)
	switch {
	case res.entry == nil:
		c.fills.WithLabelValues("not_stored").Inc()
	case res.tooLarge:
		c.fills.WithLabelValues("too_large").Inc()
	default:
		c.fills.WithLabelValues("stored").Inc()
	}
	if res.entry != nil {
		c.put(res.entry)
	}
	if ff != nil {
		c.toFleet(ctx, key, ff, res.entry)
	}
	c.land(f, key, res)
}

// land ends flight f with res: its waiters get it, and the next miss of
// key starts a new fill.
func (c *Cache) land(f *flight, key string, res *fetched) {
	c.mu.Lock()
	delete(c.flights, key)
	c.mu.Unlock()
	f.res = res
	close(f.done)
}

// serveInto runs out through next into rw. It reports whether the response
// was aborted midway: the upstream body failed or grew past the limit.
func (c *Cache) serveInto(rw *recorder, out *http.Request, next http.Handler, key string) (aborted bool) {
	defer func() {
		if p := recover(); p != nil {
			aborted = true
			if p != http.ErrAbortHandler {
				c.opts.Log.Error("cache fill panicked", "key", key, "panic", fmt.Sprint(p))
			}
		}
	}()
	next.ServeHTTP(rw, out)
	return false
}

var errTooLarge = errors.New("response larger than cache.max_object_bytes")

// recorder is the ResponseWriter of a fill: it keeps the response in
// memory up to limit bytes and fails the write beyond, which aborts the
// upstream body.
type recorder struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	limit    int64
	tooLarge bool
	interim  chan<- interimResponse
}

func (rw *recorder) Header() http.Header { return rw.header }

// result turns what was recorded into a fetch result: a response too large
// to keep, a synthetic 502 for an aborted one (never a truncated body), or
// the response without its Set-Cookie.
func (rw *recorder) result(aborted bool) *fetched {
	switch {
	case rw.tooLarge:
		return &fetched{tooLarge: true}
	case aborted:
		return &fetched{err: errors.New("upstream response aborted midway"), status: http.StatusBadGateway, header: http.Header{"Content-Type": {"application/json"}},
			body: []byte(`{"error":"upstream response aborted","detail":"the upstream response ended before it was complete"}` + "\n")}
	}
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	rw.header.Del("X-Cache")
	rw.header.Del("X-Sluice-Wait") // this fill's wait, not a later hit's
	body := rw.body.Bytes()
	if cap(body) > len(body)+len(body)/8 {
		body = bytes.Clone(body) // a grown buffer would keep up to twice the body alive in the cache
	}
	return &fetched{status: rw.status, header: rw.header, body: body}
}

func (rw *recorder) WriteHeader(code int) {
	if rw.status != 0 {
		return
	}
	if code < 200 {
		// Not stored, but passed to the client that is waiting for this
		// fill; 101 never is: a fill cannot switch protocols.
		if code != http.StatusSwitchingProtocols {
			select {
			case rw.interim <- interimResponse{status: code, header: rw.header.Clone()}:
			default:
			}
		}
		return
	}
	rw.status = code
	if n, err := strconv.ParseInt(rw.header.Get("Content-Length"), 10, 64); err == nil && n > rw.limit {
		rw.tooLarge = true
	} else if err == nil && n > 0 {
		rw.body.Grow(int(n)) // the stored body's memory is what it holds, not a doubled buffer
	}
}

func (rw *recorder) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.tooLarge || int64(rw.body.Len()+len(p)) > rw.limit {
		rw.tooLarge = true
		return 0, errTooLarge
	}
	return rw.body.Write(p)
}
