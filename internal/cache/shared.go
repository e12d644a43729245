package cache

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

// Shared is a second level behind the memory cache, shared by the
// instances of a fleet (fleet.cache): what one instance fetched answers
// every other, and one instance at a time fills a key for all. Only
// rules-mode responses to requests without credentials are shared.
// Implementations bound each call by the fleet's timeout; an error means
// the instance fills the key alone.
type Shared interface {
	// Lookup returns key's response if an instance stored one. If none
	// did, it claims the fill of key for up to hold; claimed is false when
	// another instance holds the claim.
	Lookup(ctx context.Context, key string, hold time.Duration) (resp *SharedResponse, claimed bool, err error)
	// Await waits up to d for the claim holder's fill of key; nil when it
	// ended without storing one.
	Await(ctx context.Context, key string, d time.Duration) (*SharedResponse, error)
	// Store shares resp under key and ends this instance's claim of it.
	Store(ctx context.Context, key string, resp *SharedResponse) error
	// Release ends this instance's claim of key without a response.
	Release(ctx context.Context, key string) error
	// Purge removes every shared entry whose key match accepts, and
	// returns how many it removed.
	Purge(ctx context.Context, match func(key string) bool) (int, error)
}

// SharedResponse is a response as the fleet keeps it.
type SharedResponse struct {
	Status int
	Header http.Header // never Set-Cookie: a stored entry has none
	Body   []byte
	// Fresh is how long it stays fresh: its TTL when stored, what is left
	// of it when looked up (the store's clock, not an instance's).
	Fresh time.Duration
}

// fleetResults are the values of sluice_cache_fleet_total's result label.
var fleetResults = []string{"hit", "filled", "waited", "alone"}

func newFleetCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "cache", Name: "fleet_total",
		Help: "Local misses of shared keys by how the fleet cache answered: hit (another instance's response), " +
			"filled (this instance fetched it for the fleet), waited (another instance's fill, after waiting), " +
			"alone (Redis did not answer, or the fill stored nothing: fetched without the fleet).",
	}, []string{"result"})
	for _, r := range fleetResults {
		v.WithLabelValues(r)
	}
	return v, metrics.Register(reg, v)
}

// maxFleetWait bounds a wait for another instance's fill: past it (that
// instance may have died holding the claim) this one fetches alone.
const maxFleetWait = 5 * time.Second

// fleetFill is one rules-mode fill's part in the fleet cache.
type fleetFill struct {
	ttl, stale time.Duration
	claimed    bool
}

// fromFleet looks key up in the fleet cache before the upstream is asked:
// a response another instance stored, or, when another instance is
// fetching it, that fill's response once it lands. nil: this instance
// fetches it (holding the fleet's claim if ff.claimed).
func (c *Cache) fromFleet(ctx context.Context, key string, ff *fleetFill) *entry {
	resp, claimed, err := c.opts.Shared.Lookup(ctx, key, c.opts.FetchTimeout)
	result := "hit"
	switch {
	case err != nil:
		c.fleet.WithLabelValues("alone").Inc()
		return nil
	case resp == nil && claimed:
		ff.claimed = true
		return nil // counted as filled once it is stored
	case resp == nil:
		if resp, err = c.opts.Shared.Await(ctx, key, min(c.opts.FetchTimeout, maxFleetWait)); err != nil || resp == nil {
			c.fleet.WithLabelValues("alone").Inc()
			return nil
		}
		result = "waited"
	}
	c.fleet.WithLabelValues(result).Inc()
	now := c.opts.Now()
	expires := now.Add(resp.Fresh)
	return &entry{key: key, status: resp.Status, header: resp.Header, body: resp.Body,
		stored: expires.Add(-ff.ttl), expires: expires, dead: expires.Add(ff.stale)}
}

// toFleet shares what this instance's fill stored (nil: nothing), and
// ends its claim either way.
func (c *Cache) toFleet(ctx context.Context, key string, ff *fleetFill, e *entry) {
	if e == nil || e.pass {
		if ff.claimed {
			c.opts.Shared.Release(ctx, key)
			c.fleet.WithLabelValues("alone").Inc()
		}
		return
	}
	err := c.opts.Shared.Store(ctx, key, &SharedResponse{Status: e.status, Header: e.header, Body: e.body, Fresh: e.expires.Sub(e.stored)})
	if ff.claimed {
		if err != nil {
			c.fleet.WithLabelValues("alone").Inc()
		} else {
			c.fleet.WithLabelValues("filled").Inc()
		}
	}
}
