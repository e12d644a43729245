package ca

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"

	"golang.org/x/sync/singleflight"
)

// Options configures an Authority.
type Options struct {
	// Allow is asked before every mint and every cache hit; a non-nil error
	// refuses the leaf. It is the policy's veto: sluice never holds a leaf
	// for a host that the current config does not intercept. Required.
	Allow func(host string) error
	// LeafValidity is the lifetime of each leaf; a leaf is re-minted when a
	// quarter of it is left. Default 7 days.
	LeafValidity time.Duration
	// CacheSize caps the cached leaves; the least recently used goes first. Default 1024.
	CacheSize int
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Registerer receives the metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
}

// Authority mints leaf certificates signed by a Root. It is safe for
// concurrent use; a burst of handshakes for one new host mints once.
type Authority struct {
	root  *Root
	opts  Options
	group singleflight.Group

	leaves *lru.Cache[string, cached] // safe for concurrent use

	minted prometheus.Counter
	lookup *prometheus.CounterVec
}

type cached struct {
	cert  *tls.Certificate
	renew time.Time
}

// New returns an Authority that signs with root.
func New(root *Root, opts Options) (*Authority, error) {
	if opts.Allow == nil {
		return nil, errors.New("ca: Options.Allow is required")
	}
	if opts.LeafValidity <= 0 {
		opts.LeafValidity = 7 * 24 * time.Hour
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = 1024
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	leaves, err := lru.New[string, cached](opts.CacheSize)
	if err != nil {
		return nil, err
	}
	a := &Authority{
		root: root, opts: opts, leaves: leaves,
		minted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "ca", Name: "leaves_minted_total",
			Help: "Leaf certificates minted.",
		}),
		lookup: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "ca", Name: "leaf_cache_total",
			Help: "Leaf certificate lookups by result (hit, miss).",
		}, []string{"result"}),
	}
	if err := metrics.Register(opts.Registerer, a.minted, a.lookup); err != nil {
		return nil, err
	}
	a.lookup.WithLabelValues("hit") // both results from the first scrape
	a.lookup.WithLabelValues("miss")
	return a, nil
}

// Root returns the signing root.
func (a *Authority) Root() *Root { return a.root }

// Leaf returns a certificate for host (a normalised name or IP), from the
// cache or freshly minted.
func (a *Authority) Leaf(host string) (*tls.Certificate, error) {
	if err := a.opts.Allow(host); err != nil {
		return nil, fmt.Errorf("no certificate for %q: %w", host, err)
	}
	now := a.opts.Now()
	if c := a.get(host, now); c != nil {
		a.lookup.WithLabelValues("hit").Inc()
		return c, nil
	}
	a.lookup.WithLabelValues("miss").Inc()
	v, err, _ := a.group.Do(host, func() (any, error) {
		if c := a.get(host, now); c != nil { // minted while we queued
			return c, nil
		}
		c, err := a.root.Sign([]string{host}, now, a.opts.LeafValidity)
		if err != nil {
			return nil, err
		}
		a.minted.Inc()
		a.put(host, c, now.Add(a.opts.LeafValidity*3/4))
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

func (a *Authority) get(host string, now time.Time) *tls.Certificate {
	c, ok := a.leaves.Get(host)
	if !ok {
		return nil
	}
	if !now.Before(c.renew) {
		a.leaves.Remove(host)
		return nil
	}
	return c.cert
}

func (a *Authority) put(host string, cert *tls.Certificate, renew time.Time) {
	a.leaves.Add(host, cached{cert: cert, renew: renew})
}

// Len returns the number of cached leaves.
func (a *Authority) Len() int { return a.leaves.Len() }
