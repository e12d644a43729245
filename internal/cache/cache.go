// Package cache is sluice's in-memory HTTP response cache.
//
// Per host it either follows forced-TTL rules (from the host entry and its
// API profile: one upstream call per key per TTL, whatever the upstream's
// Cache-Control says) or behaves as an RFC 9111 shared cache
// (`cache: standard`). Concurrent misses for one key are coalesced into one
// upstream request whose response every waiter gets; the fetch runs
// detached, so a waiter that disconnects cancels nobody else's. When the
// upstream fails, an entry expired by at most stale_if_error is served
// instead. Memory is bounded (cache.max_bytes, LRU).
//
// Config keys: cache.max_bytes, cache.max_object_bytes, cache.stale_if_error,
// cache.fetch_timeout; per host: cache (rules | standard | off, or
// {mode, rules, stale_if_error}).
//
// With a Shared level (fleet.cache), a local miss of a rules-mode key
// without credentials looks there first and shares what it fetched.
//
// Metrics: sluice_cache_requests_total{result}, sluice_cache_coalesced_total,
// sluice_cache_fills_total{outcome}, sluice_cache_evictions_total,
// sluice_cache_bytes, sluice_cache_entries; sluice_cache_fleet_total{result} with Shared.
package cache

import (
	"context"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/decision"
	"sluice/internal/metrics"
)

// Options configures a Cache.
type Options struct {
	// MaxBytes bounds the memory of all entries.
	MaxBytes int64
	// MaxObjectBytes is the largest body stored.
	MaxObjectBytes int64
	// FetchTimeout bounds one detached upstream fetch.
	FetchTimeout time.Duration
	// RefreshGrace is how long past its expiry a rules-mode entry answers
	// while a refresh runs; negative: the round trip of the fill that stored it.
	RefreshGrace time.Duration
	// Shared (nil: none) is the fleet's cache behind this one (fleet.cache).
	Shared Shared
	// Now is the clock; nil is time.Now.
	Now        func() time.Time
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Cache holds responses for every host. It is safe for concurrent use.
type Cache struct {
	opts Options

	mu      sync.Mutex
	entries *simplelru.LRU[string, *entry] // by variant key; bounded by size, not count
	size    int64                          // the sum of the entries' cost
	flights map[string]*flight

	requests  *prometheus.CounterVec
	results   map[string]prometheus.Counter // requests' children by result, looked up once
	coalesced prometheus.Counter
	refreshes prometheus.Counter
	fills     *prometheus.CounterVec
	evictions prometheus.Counter
	fleet     *prometheus.CounterVec // nil without Shared
	bytesG    prometheus.GaugeFunc
	entriesG  prometheus.GaugeFunc
}

// entry is one stored response.
type entry struct {
	key    string
	status int
	header http.Header // without Set-Cookie and hop-by-hop fields
	body   []byte
	// stored is when the response was received; expires ends its freshness.
	stored  time.Time
	expires time.Time
	// dead is when it may no longer be served, even stale.
	dead time.Time
	// pass marks a key not to cache (its response was too large) until expires.
	pass bool
	// took is how long the fill that stored it waited for the upstream:
	// a hit within that of the expiry starts the next fill.
	took time.Duration
	// std holds what standard mode needs; nil in rules mode.
	std *stdMeta
	// index, in standard mode, makes this the entry of a URL's variants.
	index *variants
	// size is its cost as it was counted when stored.
	size int64
	// contentLength is the Content-Length value of body, set when stored.
	contentLength []string
}

func (e *entry) cost() int64 {
	n := int64(len(e.key) + len(e.body) + 128)
	for k, vs := range e.header {
		n += int64(len(k))
		for _, v := range vs {
			n += int64(len(v) + 16)
		}
	}
	return n
}

// New returns an empty Cache.
func New(opts Options) (*Cache, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Cache{opts: opts, flights: map[string]*flight{}}
	entries, err := simplelru.NewLRU(math.MaxInt, func(_ string, e *entry) { c.size -= e.size })
	if err != nil {
		return nil, err
	}
	c.entries = entries
	c.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "requests_total",
		Help: "Requests to cached hosts by result: hit, miss, stale (served after an upstream failure), bypass.",
	}, []string{"result"})
	c.results = map[string]prometheus.Counter{}
	for _, r := range []decision.CacheResult{decision.Hit, decision.Miss, decision.Stale, decision.Bypass} {
		c.results[r.String()] = c.requests.WithLabelValues(r.String())
	}
	c.coalesced = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "coalesced_total",
		Help: "Requests that waited for another request's upstream fetch instead of sending their own.",
	})
	c.refreshes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "refreshes_total",
		Help: "Background fills started by a hit near or just past its entry's expiry (or stale-while-revalidate), answered from the current copy meanwhile.",
	})
	c.fills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "fills_total",
		Help: "Fills of the cache, by outcome: stored, not_stored, too_large, revalidated (upstream fetches), fleet (from another instance, no upstream call).",
	}, []string{"outcome"})
	for _, o := range []string{"stored", "not_stored", "too_large", "revalidated", "fleet"} {
		c.fills.WithLabelValues(o)
	}
	c.evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "evictions_total",
		Help: "Entries evicted to stay within cache.max_bytes.",
	})
	c.bytesG = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "bytes", Help: "Memory held by cached responses (estimate).",
	}, func() float64 { c.mu.Lock(); defer c.mu.Unlock(); return float64(c.size) })
	c.entriesG = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "entries", Help: "Cached responses.",
	}, func() float64 { c.mu.Lock(); defer c.mu.Unlock(); return float64(c.entries.Len()) })
	if err := metrics.Register(opts.Registerer, c.requests, c.coalesced, c.refreshes, c.fills, c.evictions, c.bytesG, c.entriesG); err != nil {
		return nil, err
	}
	if opts.Shared != nil {
		if c.fleet, err = newFleetCounter(opts.Registerer); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// get returns the entry for key, or nil once it is dead.
func (c *Cache) get(key string, now time.Time) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries.Get(key)
	if !ok {
		return nil
	}
	if !now.Before(e.dead) {
		c.entries.Remove(key)
		return nil
	}
	return e
}

// put stores e (replacing its key's entry) and evicts the least recently
// used entries until the cache fits in MaxBytes again.
func (c *Cache) put(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries.Remove(e.key)
	e.size = e.cost()
	e.contentLength = []string{strconv.Itoa(len(e.body))}
	c.entries.Add(e.key, e)
	c.size += e.size
	for c.size > c.opts.MaxBytes && c.entries.Len() > 1 {
		c.entries.RemoveOldest()
		c.evictions.Inc()
	}
}

func (c *Cache) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries.Remove(key)
}

// Purge removes the entries of host (a name: any port; or host:port) whose
// path starts with pathPrefix ("": all of them; host "": every host), here
// and in the fleet's shared cache, and returns how many it removed in
// each. A fill in flight still stores its answer.
func (c *Cache) Purge(ctx context.Context, host, pathPrefix string) (local, shared int, err error) {
	match := func(key string) bool { return purgeMatch(key, host, pathPrefix) }
	c.mu.Lock()
	for _, k := range c.entries.Keys() {
		if match(k) {
			c.entries.Remove(k)
			local++
		}
	}
	c.mu.Unlock()
	if c.opts.Shared != nil {
		shared, err = c.opts.Shared.Purge(ctx, match)
	}
	return local, shared, err
}

// purgeMatch reports whether key (see Key: "METHOD host:port/path?query",
// a NUL and the codings, or a variant's key built on it) is of host and
// under pathPrefix.
func purgeMatch(key, host, pathPrefix string) bool {
	_, rest, ok := strings.Cut(key, " ")
	if !ok {
		return false
	}
	addr, path := rest, ""
	if i := strings.IndexAny(rest, "/\x00"); i >= 0 {
		addr, path = rest[:i], rest[i:]
	}
	if host != "" {
		name, _, err := net.SplitHostPort(addr)
		if !strings.EqualFold(addr, host) && (err != nil || !strings.EqualFold(name, host)) {
			return false
		}
	}
	return strings.HasPrefix(path, pathPrefix)
}

// Bytes returns the memory the entries hold (the estimate cache.max_bytes bounds).
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Len returns the number of entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries.Len()
}
