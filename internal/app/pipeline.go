package app

import (
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/blobs"
	"sluice/internal/ca"
	"sluice/internal/cache"
	"sluice/internal/config"
	"sluice/internal/filter"
	"sluice/internal/obs"
	"sluice/internal/policy"
	"sluice/internal/proxy"
	"sluice/internal/route"
	"sluice/internal/store"
	"sluice/internal/throttle"
	"sluice/internal/vault"
)

// newGateway builds every component that outlives a reload (the CA's leaf
// cache, the response cache, the budgets, the server), hands them to the
// gateway and puts t in force. It starts nothing.
func newGateway(t *route.Table, root *ca.Root, log *slog.Logger, accessLines io.Writer, reg prometheus.Registerer, blobStore *blobs.Store, bans *filter.Bans, meters store.Meters, fleetCache cache.Shared) (*route.Gateway, *proxy.Server, error) {
	cfg := t.Config
	gw := &route.Gateway{}
	authority, err := ca.New(root, ca.Options{
		Allow:        gw.LeafAllowed,
		LeafValidity: cfg.CA.LeafValidity.D(),
		CacheSize:    cfg.CA.LeafCacheSize,
		Registerer:   reg,
	})
	if err != nil {
		return nil, nil, err
	}
	access, err := obs.NewMetrics(reg)
	if err != nil {
		return nil, nil, err
	}
	cc := cfg.Cache
	grace := time.Duration(-1) // the fill's own round trip
	if cc.RefreshGrace != nil {
		grace = cc.RefreshGrace.D()
	}
	respCache, err := cache.New(cache.Options{MaxBytes: int64(cc.MaxBytes), MaxObjectBytes: int64(cc.MaxObjectBytes), RefreshGrace: grace,
		FetchTimeout: cc.FetchTimeout.D(), Shared: fleetCache, Log: log.With("component", "cache"), Registerer: reg})
	if err != nil {
		return nil, nil, err
	}
	limiter, err := throttle.New(log.With("component", "throttle"), time.Now, reg, meters)
	if err != nil {
		return nil, nil, err
	}
	reports, err := policy.NewReports(log.With("component", "policy"), reg)
	if err != nil {
		return nil, nil, err
	}
	clients, err := vault.NewMetrics(reg)
	if err != nil {
		return nil, nil, err
	}
	srv, err := proxy.New(proxy.Options{Config: cfg, Pipeline: gw, Authority: authority, Root: root, Log: log, Registerer: reg,
		Reverse: gw.Backend, ClientCertificates: gw.ClientCertificates,
		Live: func() *config.Config { return gw.Table().Config }})
	if err != nil {
		return nil, nil, err
	}
	gw.Deps = route.Deps{Log: log, Access: access, Proxy: srv, Cache: respCache, Blobs: blobStore, Limit: limiter, Bans: bans, Reports: reports, Clients: clients,
		AccessLines: accessLines}
	gw.Install(t)
	return gw, srv, nil
}
