// Package dashboard is the admin listener's live page: once a second it
// samples sluice's own metrics and state into a Status (requests per
// second by outcome, hit ratio and upstream calls saved, budgets, the last
// refusals, bans, the blob store and its downloads, DNS pins), keeps the
// last minutes of it, and serves
//
//	GET /          the page (its script and style are embedded, no CDN)
//	GET /status    the Status as JSON, with the history (sluice status reads it)
//	GET /events    the Status as Server-Sent Events, one a second
//
// Like /metrics they need no token and show nothing secret: no query
// string, header or key; every action on the page (unban) calls the
// token-protected admin API with the token its user types in.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"sluice/internal/blobs"
	"sluice/internal/guardrails"
	"sluice/internal/obs"
	"sluice/internal/resolve"
	"sluice/internal/store"
	"sluice/internal/streams"
	"sluice/internal/throttle"
)

//go:embed assets
var assets embed.FS

// Sources are where the Status comes from; a nil one is left out.
type Sources struct {
	Gatherer prometheus.Gatherer
	Budgets  func() []throttle.Level
	Refusals func() []obs.Refusal
	Bans     func(context.Context) ([]store.Ban, error)
	Blobs    *blobs.Store
	Pins     func() []resolve.Pin
	Streams  func() []streams.HubStatus
	// Trading are the halts in force and each trade limit's use.
	Trading func() ([]guardrails.Halt, []guardrails.Use)
	// Instance names this sluice (fleet.instance, or the host name).
	Instance string
	Version  string
}

// Status is what the page and sluice status show.
type Status struct {
	Time     time.Time `json:"time"`
	Instance string    `json:"instance"`
	Version  string    `json:"version"`
	Uptime   float64   `json:"uptime_seconds"`
	// Now is the last second's rates; Totals count since the start.
	Now      Point            `json:"now"`
	Totals   Totals           `json:"totals"`
	Cache    CacheStatus      `json:"cache"`
	Budgets  []throttle.Level `json:"budgets"`
	Refusals []obs.Refusal    `json:"refusals"`
	Bans     []store.Ban      `json:"bans"` // the soonest to end, at most maxBans
	// BansTotal counts every ban in force.
	BansTotal int           `json:"bans_total"`
	Blobs     *BlobStatus   `json:"blobs,omitempty"`
	Pins      []resolve.Pin `json:"pins,omitempty"`
	// Streams are the shared market streams, by host and market.
	Streams []streams.HubStatus `json:"streams,omitempty"`
	// Halts and TradeLimits are the trade guardrails' halts in force and
	// each client's, group's and key's use of its limits.
	Halts       []guardrails.Halt `json:"halts,omitempty"`
	TradeLimits []guardrails.Use  `json:"trade_limits,omitempty"`
	// History is the last minutes, a Point a second, the oldest first.
	History []Point `json:"history,omitempty"`
	// detailed: the fields read from the components are filled in.
	detailed bool
}

// Outcomes count requests by how they ended: per second in a Point,
// since the start in Totals.
type Outcomes struct {
	Requests   float64 `json:"requests"`
	Hit        float64 `json:"hit"`
	Miss       float64 `json:"miss"`
	Stale      float64 `json:"stale"`
	Refused    float64 `json:"refused"`
	OverBudget float64 `json:"over_budget"`
}

// Point is one second's rates, per second.
type Point struct {
	Time int64 `json:"t"` // Unix milliseconds
	Outcomes
	// HitRatio is hits over cache lookups (hit, miss, stale) in the second; 0 without any.
	HitRatio float64 `json:"hit_ratio"`
}

// Totals are counts since sluice started.
type Totals struct {
	Outcomes
	// Saved is the upstream calls the caches saved: hits, and requests
	// that waited for another's fetch instead of making their own.
	Saved    float64 `json:"upstream_calls_saved"`
	HitRatio float64 `json:"hit_ratio"`
}

// CacheStatus is the response cache's size.
type CacheStatus struct {
	Bytes   float64 `json:"bytes"`
	Entries float64 `json:"entries"`
}

// BlobStatus is the blob store's size and its downloads in progress.
type BlobStatus struct {
	Bytes     int64            `json:"bytes"`
	Files     int              `json:"files"`
	Downloads []blobs.Progress `json:"downloads"`
}

// maxBans and maxRefusals are how many bans and refusals a Status lists
// (it goes out every second).
const maxBans, maxRefusals = 50, 20

// keep is how many seconds of history are kept.
const keep = 300

// Dashboard samples the Sources and serves the page.
type Dashboard struct {
	src     Sources
	started time.Time

	mu      sync.Mutex
	last    counts
	lastAt  time.Time
	sampled bool    // last holds a sample
	history []Point // a ring of keep, in order from head
	head    int
	status  Status
	tick    chan struct{} // closed and replaced at each sample
	// watchers are the event streams open: only while there are any is
	// each sample read in full from the components.
	watchers atomic.Int32
	done     chan struct{} // closed when Run ends
}

// New returns a Dashboard; Run samples it.
func New(src Sources) *Dashboard {
	now := time.Now()
	return &Dashboard{src: src, started: now, lastAt: now, tick: make(chan struct{}), done: make(chan struct{}),
		status: Status{Time: now, Instance: src.Instance, Version: src.Version}}
}

// Run samples once a second until ctx ends; then the event streams end.
func (d *Dashboard) Run(ctx context.Context) {
	defer close(d.done)
	d.sample(ctx)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.sample(ctx)
		}
	}
}

// counts are the counters a Point is the rate of.
type counts struct {
	requests, hit, miss, stale, refused, overBudget, coalesced float64
	cacheBytes, cacheEntries                                   float64
}

// read sums the counters from the gathered metrics.
func read(g prometheus.Gatherer) counts {
	var c counts
	if g == nil {
		return c
	}
	families, _ := g.Gather() // a collector's error leaves the others' values
	for _, f := range families {
		for _, m := range f.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			switch f.GetName() {
			case "sluice_proxy_requests_total":
				c.requests += v
				if label(m, "decision") == "deny" {
					c.refused += v
				}
			case "sluice_cache_requests_total", "sluice_blobs_requests_total":
				switch label(m, "result") {
				case "hit":
					c.hit += v
				case "miss":
					c.miss += v
				case "stale":
					c.stale += v
				}
			case "sluice_throttle_rejected_total":
				c.overBudget += v
			case "sluice_cache_coalesced_total":
				c.coalesced += v
			case "sluice_cache_bytes":
				c.cacheBytes = v
			case "sluice_cache_entries":
				c.cacheEntries = v
			}
		}
	}
	return c
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func ratio(hit, miss, stale float64) float64 {
	if n := hit + miss + stale; n > 0 {
		return hit / n
	}
	return 0
}

// details adds to st what is read from the components (budgets, which
// may be Redis round trips, refusals, bans, blobs, pins): each second while
// an event stream is open, else when /status asks.
func (d *Dashboard) details(ctx context.Context, st *Status) {
	if d.src.Budgets != nil {
		st.Budgets = d.src.Budgets()
	}
	if d.src.Refusals != nil {
		st.Refusals = d.src.Refusals()
		st.Refusals = st.Refusals[:min(len(st.Refusals), maxRefusals)]
	}
	if d.src.Bans != nil {
		bctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st.Bans, _ = d.src.Bans(bctx) // unreadable (a fleet's Redis gone): shown as none
		cancel()
		st.BansTotal = len(st.Bans)
		st.Bans = st.Bans[:min(len(st.Bans), maxBans)]
	}
	if b := d.src.Blobs; b != nil {
		size, files := b.Size()
		st.Blobs = &BlobStatus{Bytes: size, Files: files, Downloads: b.Downloads()}
	}
	if d.src.Pins != nil {
		st.Pins = d.src.Pins()
	}
	if d.src.Streams != nil {
		st.Streams = d.src.Streams()
	}
	if d.src.Trading != nil {
		st.Halts, st.TradeLimits = d.src.Trading()
	}
	st.detailed = true
}

func (d *Dashboard) sample(ctx context.Context) {
	now := time.Now()
	c := read(d.src.Gatherer)
	st := Status{Time: now, Instance: d.src.Instance, Version: d.src.Version, Uptime: now.Sub(d.started).Seconds(),
		Totals: Totals{Outcomes: Outcomes{Requests: c.requests, Hit: c.hit, Miss: c.miss, Stale: c.stale, Refused: c.refused, OverBudget: c.overBudget},
			Saved: c.hit + c.coalesced, HitRatio: ratio(c.hit, c.miss, c.stale)},
		Cache: CacheStatus{Bytes: c.cacheBytes, Entries: c.cacheEntries}}
	if d.watchers.Load() > 0 {
		d.details(ctx, &st)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if secs := now.Sub(d.lastAt).Seconds(); d.sampled && secs > 0 {
		rate := func(cur, prev float64) float64 { return max(cur-prev, 0) / secs }
		st.Now = Point{Time: now.UnixMilli(), Outcomes: Outcomes{Requests: rate(c.requests, d.last.requests), Hit: rate(c.hit, d.last.hit),
			Miss: rate(c.miss, d.last.miss), Stale: rate(c.stale, d.last.stale), Refused: rate(c.refused, d.last.refused),
			OverBudget: rate(c.overBudget, d.last.overBudget)},
			HitRatio: ratio(c.hit-d.last.hit, c.miss-d.last.miss, c.stale-d.last.stale)}
		d.push(st.Now)
	} else {
		st.Now = Point{Time: now.UnixMilli()}
	}
	d.last, d.lastAt, d.sampled = c, now, true
	d.status = st
	close(d.tick)
	d.tick = make(chan struct{})
}

func (d *Dashboard) push(p Point) {
	if len(d.history) < keep {
		d.history = append(d.history, p)
		return
	}
	d.history[d.head] = p
	d.head = (d.head + 1) % keep
}

// Status returns the latest sample, read in full, with the history when asked.
func (d *Dashboard) Status(ctx context.Context, history bool) Status {
	d.mu.Lock()
	st := d.status
	if history {
		st.History = append(append([]Point(nil), d.history[d.head:]...), d.history[:d.head]...)
	}
	d.mu.Unlock()
	if !st.detailed {
		d.details(ctx, &st)
	}
	return st
}

// next returns the channel closed at the next sample.
func (d *Dashboard) next() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tick
}

// Register adds the page's routes to mux.
func (d *Dashboard) Register(mux *http.ServeMux) {
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		http.ServeFileFS(w, r, static, "index.html")
	})
	mux.Handle("GET /dashboard/", http.StripPrefix("/dashboard/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		files.ServeHTTP(w, r)
	})))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.Status(r.Context(), r.URL.Query().Get("history") != "0"))
	})
	mux.HandleFunc("GET /events", d.events)
}

// secure keeps the page to its own script and style, and out of frames.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// events streams the Status once a second: the first event with the
// history, the others without.
func (d *Dashboard) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	d.watchers.Add(1)
	defer d.watchers.Add(-1)
	history := true
	for {
		next := d.next()
		data, _ := json.Marshal(d.Status(r.Context(), history))
		history = false
		if _, err := w.Write(append(append([]byte("event: status\ndata: "), data...), "\n\n"...)); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
		select {
		case <-next:
		case <-r.Context().Done():
			return
		case <-d.done:
			return
		}
	}
}
