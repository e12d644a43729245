package route

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/blobs"
	"sluice/internal/ca"
	"sluice/internal/cache"
	"sluice/internal/config"
	"sluice/internal/filter"
	"sluice/internal/guardrails"
	"sluice/internal/obs"
	"sluice/internal/onboard"
	"sluice/internal/policy"
	"sluice/internal/proxy"
	"sluice/internal/store"
	"sluice/internal/streams"
	"sluice/internal/throttle"
	"sluice/internal/vault"
)

// Components are what a gateway is built on that the caller owns: the
// CA root, the log, the registry and the shared state.
type Components struct {
	Root *ca.Root
	Log  *slog.Logger
	// AccessLines, when set, takes the access lines as JSON directly (the
	// writer of Log's JSON handler); nil: through Log.
	AccessLines io.Writer
	Registerer  prometheus.Registerer
	Blobs       *blobs.Store // nil: no blob store
	Bans        *filter.Bans
	Meters      store.Meters // nil: in memory
	FleetCache  cache.Shared // nil: none
	// TradeCounts (nil: none) counts a fleet's orders for the guardrails.
	TradeCounts guardrails.SharedCounts
	// Context ends the work that outlives requests: the shared market
	// streams' upstream connections and their clients. nil: never.
	Context context.Context
}

// tailLines is how many access lines sluice log shows from before it started.
const tailLines = 200

// NewGateway builds every component that outlives a reload (the CA's leaf
// cache, the response cache, the budgets, the server), hands them to the
// gateway and puts t in force. It starts nothing. `sluice run` and the
// tests build their gateway with it.
func NewGateway(t *Table, c Components) (*Gateway, *proxy.Server, error) {
	cfg := t.Config
	gw := &Gateway{}
	authority, err := ca.New(c.Root, ca.Options{
		Allow:        gw.LeafAllowed,
		LeafValidity: cfg.CA.LeafValidity.D(),
		CacheSize:    cfg.CA.LeafCacheSize,
		Registerer:   c.Registerer,
	})
	if err != nil {
		return nil, nil, err
	}
	access, err := obs.NewMetrics(c.Registerer)
	if err != nil {
		return nil, nil, err
	}
	cc := cfg.Cache
	grace := time.Duration(-1) // the fill's own round trip
	if cc.RefreshGrace != nil {
		grace = cc.RefreshGrace.D()
	}
	respCache, err := cache.New(cache.Options{MaxBytes: int64(cc.MaxBytes), MaxObjectBytes: int64(cc.MaxObjectBytes), RefreshGrace: grace,
		FetchTimeout: cc.FetchTimeout.D(), Shared: c.FleetCache, Log: c.Log.With("component", "cache"), Registerer: c.Registerer})
	if err != nil {
		return nil, nil, err
	}
	meters := c.Meters
	if meters == nil {
		meters = store.MemoryMeters{}
	}
	limiter, err := throttle.New(c.Log.With("component", "throttle"), time.Now, c.Registerer, meters)
	if err != nil {
		return nil, nil, err
	}
	reports, err := policy.NewReports(c.Log.With("component", "policy"), c.Registerer)
	if err != nil {
		return nil, nil, err
	}
	clients, err := vault.NewMetrics(c.Registerer)
	if err != nil {
		return nil, nil, err
	}
	srv, err := proxy.New(proxy.Options{Config: cfg, Pipeline: gw, Authority: authority, Root: c.Root, Log: c.Log, Registerer: c.Registerer,
		Reverse: gw.Backend, ClientCertificates: gw.ClientCertificates, Live: func() *config.Config { return gw.Table().Config }})
	if err != nil {
		return nil, nil, err
	}
	streamMetrics, err := streams.NewMetrics(c.Registerer)
	if err != nil {
		return nil, nil, err
	}
	guardMetrics, err := guardrails.NewMetrics(c.Registerer)
	if err != nil {
		return nil, nil, err
	}
	onboarding, err := onboard.New(c.Root.CertPEM)
	if err != nil {
		return nil, nil, err
	}
	ctx := c.Context
	if ctx == nil {
		ctx = context.Background()
	}
	gw.Deps = Deps{Log: c.Log, Access: access, Proxy: srv, Cache: respCache, Blobs: c.Blobs, Limit: limiter, Bans: c.Bans, Reports: reports, Clients: clients,
		AccessLines: c.AccessLines, Streams: streams.NewHubs(ctx, c.Log, streamMetrics, limiter), Onboarding: onboarding,
		Tail: obs.NewTail(tailLines), Guard: guardrails.New(), GuardMetrics: guardMetrics}
	gw.Deps.Guard.Shared = c.TradeCounts
	// Prices seen on the shared streams value market orders too.
	gw.Deps.Streams.Prices = gw.Deps.Guard.Prices
	gw.Install(t)
	return gw, srv, nil
}
