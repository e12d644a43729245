package cache

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"sluice/internal/config"
	"sluice/internal/testenv"
)

func std(t *testing.T) *Rules { return rulesOf(t, config.CacheStandard, 0, "") }

func TestStandardFreshness(t *testing.T) {
	for _, tt := range []struct {
		name    string
		headers map[string]string
		after   time.Duration
		cached  bool
	}{
		{"max-age fresh", map[string]string{"Cache-Control": "max-age=10"}, 5 * time.Second, true},
		{"max-age stale", map[string]string{"Cache-Control": "max-age=10"}, 11 * time.Second, false},
		{"s-maxage wins", map[string]string{"Cache-Control": "max-age=100, s-maxage=2"}, 5 * time.Second, false},
		{"no-store", map[string]string{"Cache-Control": "no-store, max-age=100"}, time.Second, false},
		{"private", map[string]string{"Cache-Control": "private, max-age=100"}, time.Second, false},
		{"no-cache", map[string]string{"Cache-Control": "no-cache, max-age=100"}, time.Second, false},
		{"Expires", map[string]string{"Expires": "+10"}, 5 * time.Second, true},
		{"invalid Expires", map[string]string{"Expires": "soon"}, time.Second, false},
		{"upstream Age counts", map[string]string{"Cache-Control": "max-age=10", "Age": "8"}, 3 * time.Second, false},
		{"heuristic from Last-Modified", map[string]string{"Last-Modified": "-1000"}, 50 * time.Second, true},
		{"invalid max-age", map[string]string{"Cache-Control": "max-age=ten"}, time.Second, false},
		{"Vary: *", map[string]string{"Cache-Control": "max-age=100", "Vary": "*"}, time.Second, false},
		{"invalid Age is ignored", map[string]string{"Cache-Control": "max-age=3600", "Age": "abc"}, time.Second, true},
		{"the first valid Age counts", map[string]string{"Cache-Control": "max-age=3600", "Age": "x, 7200, 1"}, time.Second, false},
		{"two Ages: the first", map[string]string{"Cache-Control": "max-age=10000", "Age": "3600, 3600"}, time.Second, true},
		{"a huge Age is stale", map[string]string{"Cache-Control": "max-age=10000", "Age": "99999999999999999999999"}, time.Second, false},
		{"Expires with a one-digit hour", map[string]string{"Expires": "one-digit-hour"}, time.Second, false},
		{"Expires with extra spaces", map[string]string{"Expires": "extra-spaces"}, time.Second, false},
		{"two Expires", map[string]string{"Expires": "two"}, time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{t: time.Now().Truncate(time.Second)}
			o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Date", clk.now().UTC().Format(http.TimeFormat))
				for k, v := range tt.headers {
					later := clk.now().Add(time.Hour).UTC()
					switch {
					case (k == "Expires" || k == "Last-Modified") && (v[0] == '+' || v[0] == '-'):
						var s int
						fmt.Sscan(v, &s)
						v = clk.now().Add(time.Duration(s) * time.Second).UTC().Format(http.TimeFormat)
					case v == "one-digit-hour": // years ahead, but written "9:04:05": not an HTTP-date
						v = time.Date(2035, 1, 1, 9, 4, 5, 0, time.UTC).Format("Mon, 02 Jan 2006 ") + "9:04:05 GMT"
					case v == "extra-spaces":
						v = strings.Replace(later.Format(http.TimeFormat), " ", "  ", 1)
					case v == "two":
						w.Header().Add(k, later.Format(http.TimeFormat))
						v = later.Format(http.TimeFormat)
						w.Header().Add(k, v)
						continue
					}
					w.Header().Set(k, v)
				}
				io.WriteString(w, "body")
			})
			c := newCache(t, clk, 1<<20)
			do(c, std(t), o.next, "GET", "/r")
			clk.advance(tt.after)
			w := do(c, std(t), o.next, "GET", "/r")
			if got := w.Header().Get("X-Cache") == "HIT"; got != tt.cached {
				t.Errorf("after %v: X-Cache %q (upstream hits %d), want cached=%v", tt.after, w.Header().Get("X-Cache"), o.hits.Load(), tt.cached)
			}
		})
	}
}

func TestStandardRequestDirectives(t *testing.T) {
	clk := &clock{t: time.Now()}
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=100")
		io.WriteString(w, "body")
	})
	c := newCache(t, clk, 1<<20)
	do(c, std(t), o.next, "GET", "/r")
	clk.advance(10 * time.Second)
	for _, tt := range []struct {
		name, cc string
		hit      bool
	}{
		{"none", "", true},
		{"no-cache", "no-cache", false},
		{"max-age=5 (older)", "max-age=5", false},
		{"max-age=50", "max-age=50", true},
		{"min-fresh=95 (not enough left)", "min-fresh=95", false},
	} {
		var hdr []string
		if tt.cc != "" {
			hdr = []string{"Cache-Control", tt.cc}
		}
		if got := do(c, std(t), o.next, "GET", "/r", hdr...).Header().Get("X-Cache") == "HIT"; got != tt.hit {
			t.Errorf("request Cache-Control %q: hit=%v, want %v", tt.cc, got, tt.hit)
		}
	}
	w := do(c, std(t), o.next, "GET", "/never", "Cache-Control", "only-if-cached")
	if w.Code != http.StatusGatewayTimeout || o.hits.Load() == 5 {
		t.Errorf("only-if-cached miss: %d, want 504 without an upstream request", w.Code)
	}
}

func TestStandardRevalidation(t *testing.T) {
	clk := &clock{t: time.Now()}
	var full, notModified atomic.Int64
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", clk.now().UTC().Format(http.TimeFormat)) // the origin shares the test's clock
		w.Header().Set("Cache-Control", "max-age=10")
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			notModified.Add(1)
			w.Header().Set("X-Refreshed", "yes")
			w.WriteHeader(http.StatusNotModified)
			return
		}
		full.Add(1)
		io.WriteString(w, "body")
	})
	c := newCache(t, clk, 1<<20)
	do(c, std(t), o.next, "GET", "/r")
	clk.advance(20 * time.Second)
	w := do(c, std(t), o.next, "GET", "/r")
	if w.Code != 200 || w.Body.String() != "body" || w.Header().Get("X-Refreshed") != "yes" || notModified.Load() != 1 || full.Load() != 1 {
		t.Errorf("stale entry: %d %q, X-Refreshed %q; upstream full %d / 304 %d; want revalidated by a 304 and served with its headers",
			w.Code, w.Body, w.Header().Get("X-Refreshed"), full.Load(), notModified.Load())
	}
	if w = do(c, std(t), o.next, "GET", "/r"); w.Header().Get("X-Cache") != "HIT" {
		t.Errorf("after revalidation: X-Cache %q, want HIT (fresh again)", w.Header().Get("X-Cache"))
	}
	if w = do(c, std(t), o.next, "GET", "/r", "If-None-Match", `W/"v1"`); w.Code != http.StatusNotModified {
		t.Errorf("client If-None-Match matching the stored ETag: %d, want 304", w.Code)
	}
}

func TestStandardVary(t *testing.T) {
	clk := &clock{t: time.Now()}
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=100")
		w.Header().Set("Vary", "Accept-Language")
		io.WriteString(w, "lang="+r.Header.Get("Accept-Language"))
	})
	c := newCache(t, clk, 1<<20)
	for _, tt := range []struct{ lang, want, cache string }{
		{"en", "lang=en", "MISS"}, {"de", "lang=de", "MISS"}, {"en", "lang=en", "HIT"}, {"de", "lang=de", "HIT"},
	} {
		w := do(c, std(t), o.next, "GET", "/r", "Accept-Language", tt.lang)
		if w.Body.String() != tt.want || w.Header().Get("X-Cache") != tt.cache {
			t.Errorf("Accept-Language %s: %q %s, want %q %s", tt.lang, w.Body, w.Header().Get("X-Cache"), tt.want, tt.cache)
		}
	}
}

func TestStandardInvalidation(t *testing.T) {
	clk := &clock{t: time.Now()}
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=100")
		io.WriteString(w, r.Method)
	})
	c := newCache(t, clk, 1<<20)
	do(c, std(t), o.next, "GET", "/r")
	if do(c, std(t), o.next, "GET", "/r").Header().Get("X-Cache") != "HIT" {
		t.Fatal("not cached")
	}
	do(c, std(t), o.next, "POST", "/r")
	if got := do(c, std(t), o.next, "GET", "/r").Header().Get("X-Cache"); got != "MISS" {
		t.Errorf("GET after a successful POST to the same URL: X-Cache %q, want MISS", got)
	}
}

// TestStandardPrivateNotShared: a response the cache may not store is not
// handed to other clients that waited on the same fetch either.
func TestStandardPrivateNotShared(t *testing.T) {
	release := make(chan struct{})
	var n atomic.Int64
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			<-release
		}
		w.Header().Set("Cache-Control", "private, max-age=100")
		io.WriteString(w, "for "+r.Header.Get("X-User"))
	})
	c := newCache(t, &clock{t: time.Now()}, 1<<20)
	first := make(chan string)
	go func() { first <- do(c, std(t), o.next, "GET", "/me", "X-User", "alice").Body.String() }()
	testenv.WaitFor(t, 10*time.Second, "the first request upstream", func() bool { return n.Load() > 0 })
	second := make(chan string)
	go func() { second <- do(c, std(t), o.next, "GET", "/me", "X-User", "bob").Body.String() }()
	testenv.WaitFor(t, 10*time.Second, "the second request coalesced", func() bool { return testutilCoalesced(c) > 0 })
	close(release)
	if a, b := <-first, <-second; a != "for alice" || b != "for bob" {
		t.Errorf("alice got %q, bob got %q: a private response was shared", a, b)
	}
}

func testutilCoalesced(c *Cache) float64 { return testutil.ToFloat64(c.coalesced) }

// TestStandardNeverSharesAClientsAnswer: a Set-Cookie is never stored or
// replayed, an answer to a request with a cookie is not shared unless the
// origin says it is public, and a response that was never fresh is not
// served stale to anyone unless its origin allowed that.
func TestStandardNeverSharesAClientsAnswer(t *testing.T) {
	clk := &clock{t: time.Now()}
	var down atomic.Bool
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case "/login":
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Set-Cookie", "sess=alice-secret")
		case "/me", "/never-fresh":
			w.Header().Set("Cache-Control", "max-age=0")
			w.Header().Set("ETag", `"v1"`)
		case "/me-60":
			w.Header().Set("Cache-Control", "max-age=60")
		case "/public":
			w.Header().Set("Cache-Control", "public, max-age=60")
		}
		io.WriteString(w, "for "+r.Header.Get("Cookie"))
	})
	c := newCache(t, clk, 1<<20)
	stale := rulesOf(t, config.CacheStandard, time.Hour, "") // sluice's own stale window is long

	first := do(c, stale, o.next, "GET", "/login")
	if first.Header().Get("Set-Cookie") != "sess=alice-secret" {
		t.Errorf("the fetching client lost its cookie: %v", first.Header())
	}
	second := do(c, stale, o.next, "GET", "/login")
	if second.Header().Get("X-Cache") != "HIT" || second.Header().Get("Set-Cookie") != "" {
		t.Errorf("second client: X-Cache %q Set-Cookie %q, want a HIT without the first client's cookie",
			second.Header().Get("X-Cache"), second.Header().Get("Set-Cookie"))
	}

	do(c, stale, o.next, "GET", "/me-60", "Cookie", "sess=alice")
	if w := do(c, stale, o.next, "GET", "/me-60"); w.Header().Get("X-Cache") == "HIT" || w.Body.String() != "for " {
		t.Errorf("a stranger got alice's answer: X-Cache %q body %q", w.Header().Get("X-Cache"), w.Body)
	}
	do(c, stale, o.next, "GET", "/public", "Cookie", "sess=alice")
	if w := do(c, stale, o.next, "GET", "/public"); w.Header().Get("X-Cache") != "HIT" {
		t.Errorf("a public answer to a request with a cookie: X-Cache %q, want HIT (the origin allowed it)", w.Header().Get("X-Cache"))
	}

	do(c, stale, o.next, "GET", "/never-fresh")
	clk.advance(time.Second)
	down.Store(true)
	if w := do(c, stale, o.next, "GET", "/never-fresh"); w.Header().Get("X-Cache") == "STALE" {
		t.Errorf("a never-fresh response was served stale when the origin failed")
	}
	if w := do(c, stale, o.next, "GET", "/login"); w.Header().Get("X-Cache") != "HIT" {
		t.Errorf("a fresh entry while the origin fails: X-Cache %q, want HIT", w.Header().Get("X-Cache"))
	}
	clk.advance(2 * time.Minute)
	if w := do(c, stale, o.next, "GET", "/login"); w.Header().Get("X-Cache") != "STALE" || w.Header().Get("Set-Cookie") != "" {
		t.Errorf("a once-fresh entry after the origin failed: X-Cache %q Set-Cookie %q, want STALE without a cookie",
			w.Header().Get("X-Cache"), w.Header().Get("Set-Cookie"))
	}
}

// TestStaleWhileRevalidate: RFC 5861 section 3. Within its
// stale-while-revalidate a stale response answers at once (X-Cache:
// STALE, its Age) while one background revalidation refreshes it, however
// many requests come; past it, or with must-revalidate, a request waits.
func TestStaleWhileRevalidate(t *testing.T) {
	clk := &clock{t: time.Now()}
	var calls atomic.Int64
	gate := make(chan struct{})
	cc := atomic.Pointer[string]{}
	cc.Store(new("max-age=10, stale-while-revalidate=30"))
	o := newOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 2 {
			<-gate // the revalidation, held until the test has asked
		}
		w.Header().Set("Date", clk.now().UTC().Format(http.TimeFormat))
		w.Header().Set("Cache-Control", *cc.Load())
		fmt.Fprintf(w, "v%d", calls.Load())
	})
	c := newCache(t, clk, 1<<20)
	do(c, std(t), o.next, "GET", "/r")
	clk.advance(20 * time.Second) // stale by 10 s, within the 30 s
	for range 5 {
		w := do(c, std(t), o.next, "GET", "/r")
		if w.Header().Get("X-Cache") != "STALE" || w.Body.String() != "v1" || w.Header().Get("Age") != "20" {
			t.Fatalf("within stale-while-revalidate: %s %q Age %s; want STALE v1 at once", w.Header().Get("X-Cache"), w.Body, w.Header().Get("Age"))
		}
	}
	close(gate)
	testenv.WaitFor(t, time.Second, "the revalidation's v2", func() bool { return do(c, std(t), o.next, "GET", "/r").Body.String() == "v2" })
	if n := calls.Load(); n != 2 {
		t.Errorf("5 stale answers made %d upstream calls, want 2 (one revalidation)", n)
	}
	cc.Store(new("max-age=10, stale-while-revalidate=30, must-revalidate"))
	clk.advance(45 * time.Second) // past both
	if w := do(c, std(t), o.next, "GET", "/r"); w.Header().Get("X-Cache") != "MISS" || w.Body.String() != "v3" {
		t.Errorf("past stale-while-revalidate: %s %q; want a MISS", w.Header().Get("X-Cache"), w.Body)
	}
	clk.advance(15 * time.Second) // stale by 5 s, but must-revalidate
	if w := do(c, std(t), o.next, "GET", "/r"); w.Header().Get("X-Cache") != "MISS" || w.Body.String() != "v4" {
		t.Errorf("must-revalidate within stale-while-revalidate: %s %q; want a MISS", w.Header().Get("X-Cache"), w.Body)
	}
}
