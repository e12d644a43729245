package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"gopkg.in/natefinch/lumberjack.v2"

	"sluice/internal/admin"
	"sluice/internal/blobs"
	"sluice/internal/ca"
	"sluice/internal/cache"
	"sluice/internal/config"
	"sluice/internal/dashboard"
	"sluice/internal/dialer"
	"sluice/internal/dnsserver"
	"sluice/internal/filter"
	"sluice/internal/guardrails"
	"sluice/internal/obs"
	"sluice/internal/proxy"
	"sluice/internal/resolve"
	"sluice/internal/route"
	"sluice/internal/store"
	"sluice/internal/store/redisstore"
)

// runCmd runs the gateway until ctx ends. SIGHUP re-reads the config: a
// config that does not validate is refused and the running one stays.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("run", stdout, stderr)
	if done, err := parse(fs, args); done {
		return err
	}
	p, err := build(ctx, *cfgPath, stderr)
	if err != nil {
		return err
	}
	defer p.close()
	lns, dnsUDP, err := p.listen()
	if err != nil {
		return err
	}
	defer closeAll(lns)
	if dnsUDP != nil {
		defer dnsUDP.Close()
	}
	return p.serve(ctx, lns, dnsUDP)
}

// process is a built gateway and what it runs on: the components that
// outlive a reload, before anything listens.
type process struct {
	cfgPath   string
	cfg       *config.Config // the startup config
	log       *slog.Logger
	level     *slog.LevelVar
	reg       *prometheus.Registry
	reloads   *prometheus.CounterVec
	dial      *dialer.Dialer
	root      *ca.Root
	dataDir   string
	blobStore *blobs.Store
	pins      *resolve.Pins
	fleet     *redisstore.Fleet
	bans      *filter.Bans
	gw        *route.Gateway
	srv       *proxy.Server
	// closers run in reverse order when the process ends.
	closers []func()
}

// close releases what build opened, last first.
func (p *process) close() {
	for _, c := range slices.Backward(p.closers) {
		c()
	}
}

// build loads the config at cfgPath and builds everything sluice run
// serves with; it listens on nothing.
func build(ctx context.Context, cfgPath string, stderr io.Writer) (_ *process, err error) {
	p := &process{cfgPath: cfgPath}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	reg := prometheus.NewRegistry()
	// One dialer for every config: the system resolver (or dns.resolvers,
	// from the startup config), its refusals counted.
	dial := dialer.New(nil, 0) // each host's route bounds its dials with timeouts.dial
	onRefuse, err := dialer.CountRefusals(reg)
	if err != nil {
		return nil, err
	}
	dial.OnRefuse = onRefuse
	table, err := loadTable(cfgPath, dial)
	if err != nil {
		return nil, err
	}
	cfg := table.Config
	tuneRuntime()
	level := new(slog.LevelVar)
	var logTo io.Writer = stderr
	if cfg.Log.File != "" {
		rotating := &lumberjack.Logger{Filename: cfg.Path(cfg.Log.File), MaxSize: max(int(cfg.Log.MaxSize>>20), 1), MaxBackups: cfg.Log.MaxFiles}
		p.closers = append(p.closers, func() { rotating.Close() })
		logTo = rotating
	}
	logOut := obs.NewLogWriter(logTo, 100*time.Millisecond)
	p.closers = append(p.closers, func() { logOut.Flush() })
	log := newLogger(logOut, cfg.Log, level)

	dataDir := cfg.Path(cfg.DataDir)
	if err := checkDataDir(dataDir); err != nil {
		return nil, err
	}
	root, err := ca.OpenRoot(dataDir, time.Now)
	if err != nil {
		return nil, err
	}
	if root.Created {
		env := "sluice env"
		if cfgPath != "" {
			env += " -c " + shellQuote(cfgPath)
		}
		log.Info("created a new CA; clients must trust it (eval \"$("+env+")\", or sluice ca trust)", "cert", ca.CertPath(dataDir))
	}

	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Name: "config_reloads_total", Help: "Config reloads by result (ok, error).",
	}, []string{"result"})
	reloads.WithLabelValues("ok")
	reloads.WithLabelValues("error")
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "sluice", Name: "build_info", Help: "Always 1; the labels say which build runs.",
	}, []string{"version", "revision", "goversion"})
	build := BuildInfo()
	buildInfo.WithLabelValues(build.Version, build.Revision, build.GoVersion).Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), reloads, buildInfo)

	blobStore, err := blobs.Open(filepath.Join(dataDir, "blobs"), blobs.Options{
		MaxBytes: int64(cfg.Blobs.MaxBytes), AbortWhenAlone: cfg.Blobs.WhenClientsLeave == "abort",
		Log: log.With("component", "blobs"), Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	banList, err := store.OpenBans(filepath.Join(dataDir, "bans.json"), log.With("component", "store"), nil)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, banList.Flush)
	if len(table.Resolvers) > 0 {
		dial.UseResolver(&resolve.Client{Servers: table.Resolvers})
	}
	var pins *resolve.Pins
	if cfg.DNS.Pin == "first" {
		if pins, err = resolve.OpenPins(filepath.Join(dataDir, "dns-pins.json"), log.With("component", "dns"), reg); err != nil {
			return nil, err
		}
		dial.Pins = pins
	}
	// One gateway of a fleet shares budgets and bans in Redis; alone, they
	// stay here (the ban list in the data dir, also a fleet member's
	// fallback while Redis is gone).
	var meters store.Meters = store.MemoryMeters{}
	var sharedBans store.BanList = banList
	var fleet *redisstore.Fleet
	var fleetCache cache.Shared             // an interface: nil unless set, never a nil *redisstore.Cache
	var tradeCounts guardrails.SharedCounts // likewise
	if table.FleetRedis != nil {
		if fleet, err = redisstore.NewFleet(table.FleetRedis, cfg.Fleet.Instance, cfg.Fleet.Timeout.D(), log.With("component", "fleet"), reg); err != nil {
			return nil, err
		}
		meters = fleet.Meters()
		tradeCounts = fleet.TradeCounts()
		fleetBans := fleet.Bans(ctx, banList)
		p.closers = append(p.closers, func() { fleetBans.Close() })
		sharedBans = fleetBans
		if cfg.Fleet.Cache {
			c, err := fleet.Cache(ctx, int64(cfg.Fleet.CacheMaxBytes), reg)
			if err != nil {
				return nil, err
			}
			p.closers = append(p.closers, func() { c.Close() })
			fleetCache = c
		}
		log.Info("fleet member", "instance", cfg.Fleet.Instance, "redis", table.FleetRedis.Addr, "cache", cfg.Fleet.Cache)
	}
	bans, err := filter.NewBans(sharedBans, log.With("component", "filter"), nil, reg, cfg.Bans.IPv6Prefix)
	if err != nil {
		return nil, err
	}
	var accessLines io.Writer
	if cfg.Log.Format == "json" {
		accessLines = logOut // the access line without slog's generic path
	}
	gw, srv, err := route.NewGateway(table, route.Components{Root: root, Log: log, AccessLines: accessLines, Registerer: reg,
		Blobs: blobStore, Bans: bans, Meters: meters, FleetCache: fleetCache, TradeCounts: tradeCounts, Context: ctx})
	if err != nil {
		return nil, err
	}
	p.cfg, p.log, p.level, p.reg, p.reloads, p.dial, p.root, p.dataDir = cfg, log, level, reg, reloads, dial, root, dataDir
	p.blobStore, p.pins, p.fleet, p.bans, p.gw, p.srv = blobStore, pins, fleet, bans, gw, srv
	return p, nil
}

// listen opens the startup config's listeners; DNS also on UDP.
func (p *process) listen() (map[string]net.Listener, *net.UDPConn, error) {
	lns, err := listen(p.cfg.Listen)
	if err != nil {
		return nil, nil, err
	}
	var dnsUDP *net.UDPConn
	if p.cfg.Listen.DNS != config.Off {
		// UDP on the port the TCP listener got (they differ only for :0).
		if dnsUDP, err = dnsserver.ListenUDP(lns["dns"].Addr().String()); err != nil {
			closeAll(lns)
			return nil, nil, fmt.Errorf("listen.dns (udp): %w", err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(lns)) {
		p.log.Info("listening", "listener", strings.TrimSuffix(name, ".addr"), "addr", lns[name].Addr().String())
	}
	return lns, dnsUDP, nil
}

// serve runs the listeners, the admin API and the reload loop until ctx
// ends.
func (p *process) serve(ctx context.Context, lns map[string]net.Listener, dnsUDP *net.UDPConn) error {
	cfg, cfgPath, log, level, reg, reloads, dial, root, dataDir := p.cfg, p.cfgPath, p.log, p.level, p.reg, p.reloads, p.dial, p.root, p.dataDir
	blobStore, pins, fleet, bans, gw, srv := p.blobStore, p.pins, p.fleet, p.bans, p.gw, p.srv
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log.Info("sluice started", "version", Version(), "config", configName(cfgPath), "hosts", len(cfg.Hosts), "data_dir", dataDir)
	warnReportMode(log, cfg)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	if os.Getenv("GOMEMLIMIT") == "" {
		g.Go(func() error { tuneMemory(gctx, gw.Deps.Cache, idleCollect); return nil })
	}
	if every := cfg.Blobs.ScrubEvery.D(); every > 0 {
		g.Go(func() error { scrubBlobs(gctx, blobStore, every, log.With("component", "blobs")); return nil })
	}
	if dnsUDP != nil {
		rl := 0
		if !cfg.DNS.RateLimit.Off {
			rl = cfg.DNS.RateLimit.PerSecond
		}
		dnsSrv, err := dnsserver.New(dnsserver.Options{Answers: func() *dnsserver.Answers { return gw.Table().DNS },
			RateLimit: rl, Log: log.With("component", "dns"), Registerer: reg})
		if err != nil {
			return err
		}
		g.Go(func() error { return dnsSrv.Serve(gctx, dnsUDP, lns["dns"]) })
	}
	if pins != nil {
		g.Go(func() error { pins.Keep(gctx, dial.Resolver(), cfg.DNS.Recheck.D()); return nil })
	}
	var sharedHalts admin.SharedHalts
	if fleet != nil {
		g.Go(func() error { fleet.Run(gctx); return nil })
		halts := fleet.Halts(gw.Deps.Guard.Replace)
		sharedHalts = halts
		g.Go(func() error { halts.Follow(gctx); return nil })
	}
	proxyDone := make(chan struct{})
	g.Go(func() error {
		defer close(proxyDone)
		err := srv.Serve(gctx, proxy.Listeners{Proxy: lns["proxy"], ProxyTLS: lns["proxy_tls"], Reverse: lns["reverse.addr"],
			TransparentTLS: transparentTLS(p.cfg.Listen, lns), TransparentHTTP: lns["transparent_http"]})
		gw.Close()
		return err
	})
	// swap validates and installs a new config, from SIGHUP or PUT /config;
	// on any error the running config stays.
	var mu sync.Mutex
	running := cfg
	swap := func(load func() (*route.Table, error), source string) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		t, err := load()
		if err != nil {
			reloads.WithLabelValues("error").Inc()
			log.Error("config reload refused; the running config stays", "config", source, "error", err.Error())
			return nil, err
		}
		gw.Install(t)
		next := t.Config
		reloads.WithLabelValues("ok").Inc()
		// Against what runs, not the last reload: a restart-only change
		// made by an earlier reload is still not in force.
		restartOnly := config.RestartOnly(cfg, next)
		if len(restartOnly) > 0 {
			log.Warn("these settings differ from what runs and take effect after a restart", "keys", strings.Join(restartOnly, ", "))
		}
		level.Set(parseLevel(next.Log.Level))
		running = next
		log.Info("config reloaded", "config", source, "hosts", len(next.Hosts))
		warnReportMode(log, next)
		return restartOnly, nil
	}
	if lns["admin"] != nil {
		token, err := adminToken(dataDir, true)
		if err != nil {
			return err
		}
		board := dashboard.New(dashboard.Sources{Gatherer: reg, Budgets: gw.Deps.Limit.Levels, Refusals: gw.Deps.Access.Refusals,
			Bans: bans.List, Blobs: blobStore, Pins: pinList(pins), Streams: gw.Deps.Streams.Status, Instance: instanceName(cfg), Version: Version(),
			Trading: func() ([]guardrails.Halt, []guardrails.Use) { return gw.Table().Trading(gw.Deps.Guard) }})
		g.Go(func() error { board.Run(gctx); return nil })
		adm := admin.New(admin.Options{Gatherer: reg, CACertPEM: root.CertPEM, Log: log, Blobs: blobStore, Bans: bans, Pins: pins, Token: token,
			Dashboard: board,
			Config:    func() ([]byte, error) { mu.Lock(); defer mu.Unlock(); return running.MarshalRedacted() },
			Reload: func(data []byte, dir string) ([]string, error) {
				return swap(func() (*route.Table, error) { return route.Parse(data, "PUT /config", cmp.Or(dir, cfg.Dir), dial) }, "PUT /config")
			},
			DataDir: dataDir,
			Tail:    gw.Deps.Tail,
			Purge:   gw.Deps.Cache.Purge,
			Guard:   gw.Deps.Guard,
			Halts:   sharedHalts,
			HaltScope: func(scope string) error {
				return gw.Table().HaltScope(scope)
			},
			Why: func(ctx context.Context, target, method, path, client string) any {
				return gw.Why(ctx, route.WhyQuery{Target: target, Method: method, Path: path, Client: client})
			},
		})
		g.Go(func() error { return adm.Serve(gctx, lns["admin"], cfg.Timeouts.Shutdown.D(), proxyDone) })
	}
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				log.Info("shutting down", "grace", cfg.Timeouts.Shutdown.D().String())
				return nil
			case <-hup:
				swap(func() (*route.Table, error) { return loadTable(cfgPath, dial) }, configName(cfgPath)) // refusals and warnings are logged
			}
		}
	})
	return g.Wait()
}

// tuneRuntime sets the garbage collector for a proxy: its live heap is
// small (buffers, the cache) while it allocates per request, so the default
// GOGC=100 collects many times a second. GOGC=400 cut the CPU per cache hit
// by about 7% in the benchmark; tuneMemory keeps that from holding five
// times the live heap. GOGC and GOMEMLIMIT in the environment win.
func tuneRuntime() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}

// minMemoryLimit is the soft memory limit's floor: room for the buffers of
// a few hundred connections.
const minMemoryLimit = 24 << 20

// tuneMemory keeps the soft memory limit near what sluice holds (see
// memoryLimit), checked every second until ctx ends. The collector then
// gives back what a burst allocated instead of holding five times the live
// heap (GOGC=400), while a filling cache or a crowd of connections still
// has room: the limit follows them up within a second.
//
// A burst that ends leaves its memory as garbage that no collection comes
// for, since nothing allocates any more: after idle without one, when the
// heap holds idleSlack more than after tuneMemory's last such collection,
// it collects and returns the memory to the system itself.
func tuneMemory(ctx context.Context, c *cache.Cache, idle time.Duration) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var m runtimeMemory
	var lastCycles, heldAfterCollect int64
	var sinceCollect time.Duration
	for {
		m.read()
		if m.cycles != lastCycles {
			lastCycles, sinceCollect = m.cycles, 0
		} else if sinceCollect += time.Second; sinceCollect >= idle && m.held()-heldAfterCollect > idleSlack {
			// Two collections: the first leaves what sync.Pools held (the
			// closed connections' buffers) to the second.
			runtime.GC()
			debug.FreeOSMemory()
			m.read()
			lastCycles, heldAfterCollect, sinceCollect = m.cycles, m.held(), 0
		}
		debug.SetMemoryLimit(memoryLimit(m, c.Bytes()))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runtimeMemory is what tuneMemory reads of the runtime's memory, in bytes.
type runtimeMemory struct {
	samples                                              []metrics.Sample
	live, cycles, objects, free, stacks, total, released int64
}

func (m *runtimeMemory) read() {
	if m.samples == nil {
		for _, name := range []string{"/gc/heap/live:bytes", "/gc/cycles/total:gc-cycles", "/memory/classes/heap/objects:bytes",
			"/memory/classes/heap/free:bytes", "/memory/classes/heap/stacks:bytes", "/memory/classes/os-stacks:bytes",
			"/memory/classes/total:bytes", "/memory/classes/heap/released:bytes"} {
			m.samples = append(m.samples, metrics.Sample{Name: name})
		}
	}
	metrics.Read(m.samples)
	var v [8]int64
	for i, s := range m.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = int64(s.Value.Uint64())
		}
	}
	m.live, m.cycles, m.objects, m.free = v[0], v[1], v[2], v[3]
	m.stacks, m.total, m.released = v[4]+v[5], v[6], v[7]
}

// held is the heap's memory not given back to the system.
func (m *runtimeMemory) held() int64 { return m.objects + m.free }

// memoryLimit is the soft memory limit for m: what the runtime holds
// besides the heap's objects and free pages (goroutine stacks, metadata,
// fragmentation), plus room for the heap to reach the live heap twice
// over and the stacks once more (GOGC=100, Go's default, which counts the
// stacks because the collector scans them), or twice the response cache's
// bytes; at least minMemoryLimit. Room of twice the live heap alone, less
// than GOGC=100 once 500 bots' goroutines held 9.5 MiB of stacks, ran the
// collector about once a second and cost a fifth of sluice's CPU.
func memoryLimit(m runtimeMemory, cacheBytes int64) int64 {
	overhead := m.total - m.released - m.objects - m.free
	return max(minMemoryLimit, overhead+max(2*m.live+m.stacks, 2*cacheBytes))
}

// scrubBlobs hashes every stored blob again every period until ctx ends.
func scrubBlobs(ctx context.Context, s *blobs.Store, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		checked, dropped := s.Scrub(ctx.Done())
		log.Info("blob scrub done", "files", checked, "dropped", dropped, "took", time.Since(start).Round(time.Millisecond).String())
	}
}

const (
	idleCollect = 10 * time.Second
	idleSlack   = 16 << 20
)

func configName(path string) string {
	if path == "" {
		return "(embedded default)"
	}
	return path
}

// listen opens the TCP listeners that are not off, by their listen key
// (dns: its TCP side).
func listen(l config.Listen) (map[string]net.Listener, error) {
	addrs := map[string]string{}
	for _, a := range l.Named() {
		addrs[a.Key] = a.Addr
	}
	if l.Reverse != nil {
		addrs["reverse.addr"] = l.Reverse.Addr
	}
	lns := map[string]net.Listener{}
	for key, addr := range addrs {
		if addr == config.Off {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("listen.%s: %w", key, err)
		}
		lns[key] = ln
	}
	return lns, nil
}

// transparentTLS lists the listeners of listen.transparent_tls, in order,
// each with the port it stands for: its own, as DNS sends clients there;
// 443 for port 0 (tests).
func transparentTLS(l config.Listen, lns map[string]net.Listener) []proxy.TransparentListener {
	var out []proxy.TransparentListener
	for _, a := range l.Named() {
		ln, ok := lns[a.Key]
		if !ok || !strings.HasPrefix(a.Key, "transparent_tls") {
			continue
		}
		port := uint16(443)
		if ap, err := netip.ParseAddrPort(a.Addr); err == nil && ap.Port() != 0 {
			port = ap.Port()
		}
		out = append(out, proxy.TransparentListener{Listener: ln, Port: port})
	}
	return out
}

func closeAll(lns map[string]net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

func newLogger(w io.Writer, c config.Log, level *slog.LevelVar) *slog.Logger {
	level.Set(parseLevel(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	l.UnmarshalText([]byte(s)) // validated by config
	return l
}

// warnReportMode says, at start and at each reload, that the host list is
// not enforced: report mode is for learning, never for production.
func warnReportMode(log *slog.Logger, cfg *config.Config) {
	if cfg.Policy == config.PolicyReport {
		log.Warn("policy: report: the host list is not enforced; what it would refuse is tunneled and logged (sluice hosts suggest turns that log into hosts)")
	}
}

// pinList is the dashboard's source of DNS pins; nil with dns.pin: off.
func pinList(pins *resolve.Pins) func() []resolve.Pin {
	if pins == nil {
		return nil
	}
	return pins.List
}

// instanceName names this sluice on its dashboard: its fleet name, else the host's.
func instanceName(cfg *config.Config) string {
	if cfg.Fleet.Instance != "" {
		return cfg.Fleet.Instance
	}
	h, _ := os.Hostname()
	return h
}

// checkDataDir makes sure sluice can keep its state in dir (the CA, the
// token, bans, pins, blobs), or says which setting to change.
func checkDataDir(dir string) error {
	fix := "set data_dir (or XDG_DATA_HOME) to a directory this user may write"
	if home := os.Getenv("HOME"); home != "" && strings.HasPrefix(dir, home+string(filepath.Separator)) {
		if _, err := os.Stat(home); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("data_dir %s is under HOME=%s, which does not exist: %s", dir, home, fix)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data_dir %s cannot be created: %w; %s", dir, err, fix)
	}
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return fmt.Errorf("data_dir %s is not writable by this user (uid %d): %w; %s", dir, os.Getuid(), err, fix)
	}
	f.Close()
	return os.Remove(f.Name())
}
