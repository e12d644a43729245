// Package soak holds sluice's long-running measurements: benchmarks, not
// CI tests (go test runs no benchmark unless asked). Each builds sluice,
// runs it as its own process in front of a test exchange of its own, on
// loopback, and reads the process's RSS, descriptors, goroutines and CPU
// from its admin listener.
//
//	go test ./internal/soak -run '^$' -bench Soak -benchtime 1x -timeout 30m
//	go test ./internal/soak -run '^$' -bench Scale -benchtime 1x -timeout 30m
//
// SLUICE_SOAK_DURATION sets the soak's length (default 10m); the results
// are kept in docs/bench/.
package soak

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"sluice/internal/testdns"
	"sluice/internal/testenv"
	"sluice/internal/testpki"
	"sluice/internal/testredis"
)

// exchange is a Binance-like upstream: ticker prices and order books per
// symbol, the used-weight header, and faults switched on by the schedule.
type exchange struct {
	mode     atomic.Int32 // one of the fault constants
	weight   atomic.Int64 // spent this minute
	minute   atomic.Int64
	requests atomic.Int64
	conns    atomic.Int64 // connections accepted
}

const (
	faultNone = iota
	faultStorm429
	faultBan418
	faultStall
)

func (x *exchange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x.requests.Add(1)
	switch x.mode.Load() {
	case faultStorm429:
		w.Header().Set("Retry-After", "2")
		http.Error(w, `{"code":-1003,"msg":"Too many requests"}`, http.StatusTooManyRequests)
		return
	case faultBan418:
		w.Header().Set("Retry-After", "3")
		http.Error(w, `{"code":-1003,"msg":"banned"}`, http.StatusTeapot)
		return
	case faultStall:
		select {
		case <-time.After(8 * time.Second):
		case <-r.Context().Done():
			return
		}
	}
	symbol := r.URL.Query().Get("symbol")
	cost := int64(2)
	var body any = map[string]string{"symbol": symbol, "price": strconv.Itoa(len(symbol) * 1000)}
	if r.URL.Path == "/api/v3/depth" {
		cost = 5
		body = map[string]any{"symbol": symbol, "lastUpdateId": time.Now().UnixNano(), "bids": [][]string{{"1.0", "2.0"}}, "asks": [][]string{{"1.1", "3.0"}}}
	}
	if m := time.Now().Unix() / 60; x.minute.Swap(m) != m {
		x.weight.Store(0)
	}
	w.Header().Set("X-Mbx-Used-Weight-1m", strconv.FormatInt(x.weight.Add(cost), 10))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(body)
}

// gateway is sluice running as its own process for the benchmark.
type gateway struct {
	b                      *testing.B
	dir, cfgPath           string
	proxyAddr, adminAddr   string
	cmd                    *exec.Cmd
	client                 *http.Client // to the admin listener
	roots                  *tls.Config
	exchangeCA, configBody string
}

// startGateway builds sluice, writes its config (api.binance.com with the
// binance profile, reached at exchange.soak:port through resolver dns) and
// starts it.
func startGateway(b *testing.B, port int, dns, exchangeCA, extra string) *gateway {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "sluice")
	build := exec.Command("go", "build", "-o", bin, "sluice/cmd/sluice")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	g := &gateway{b: b, dir: dir, cfgPath: filepath.Join(dir, "sluice.yaml"), exchangeCA: exchangeCA,
		proxyAddr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b)), adminAddr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b)),
		client: &http.Client{Timeout: 10 * time.Second}}
	g.configBody = fmt.Sprintf(`listen: {proxy: %s, admin: %s}
data_dir: %s
log: {file: %s, max_size: 64MiB}
dns: {resolvers: ["%s"]}
hosts:
  api.binance.com: {upstream_ca: %s, connect_to: "exchange.soak:%d", allow_private: true}
%s
`, g.proxyAddr, g.adminAddr, filepath.Join(dir, "data"), filepath.Join(dir, "sluice.log"), dns, exchangeCA, port, extra)
	g.writeConfig("info")
	g.cmd = exec.Command(bin, "run", "-c", g.cfgPath)
	if err := g.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		g.cmd.Process.Signal(syscall.SIGTERM)
		g.cmd.Wait()
	})
	testenv.WaitListening(b, g.proxyAddr)
	testenv.WaitListening(b, g.adminAddr)
	pem, err := os.ReadFile(filepath.Join(dir, "data", "ca.pem"))
	if err != nil {
		b.Fatal(err)
	}
	g.roots = &tls.Config{RootCAs: poolOf(b, pem)}
	return g
}

// writeConfig writes the config with log.level level (a live key: what a
// reload changes).
func (g *gateway) writeConfig(level string) {
	doc := strings.Replace(g.configBody, "log: {", "log: {level: "+level+", ", 1)
	if err := os.WriteFile(g.cfgPath, []byte(doc), 0o644); err != nil {
		g.b.Fatal(err)
	}
}

// reload rewrites the config and sends SIGHUP, as systemctl reload does.
func (g *gateway) reload(n int) {
	g.writeConfig([]string{"info", "warn"}[n%2])
	g.cmd.Process.Signal(syscall.SIGHUP)
}

// logFailures logs the first n access lines of 5xx answers and the
// warnings, for the reader of a run to see why; it reads the rotated log
// files too (sluice-<time>.log, oldest first, then sluice.log).
func (g *gateway) logFailures(n int) {
	files, _ := filepath.Glob(filepath.Join(g.dir, "sluice-*.log"))
	slices.Sort(files)
	kinds := map[string]int{}
	for _, name := range append(files, filepath.Join(g.dir, "sluice.log")) {
		g.countFailures(name, n, kinds)
	}
	for k, c := range kinds {
		g.b.Logf("sluice logged %d× %s", c, k)
	}
}

func (g *gateway) countFailures(name string, n int, kinds map[string]int) {
	f, err := os.Open(name)
	if err != nil {
		g.b.Log(err)
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Level, Msg, Reason, Error string
			Status                    int
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		kind := line.Msg
		if line.Msg == "request" {
			if line.Status < 500 {
				continue
			}
			kind = fmt.Sprintf("%d %s", line.Status, line.Reason)
		} else if line.Level != "WARN" && line.Level != "ERROR" {
			continue
		}
		if kinds[kind]++; kinds[kind] <= n {
			g.b.Logf("sluice: %s", sc.Text())
		}
	}
}

// sample reads the process's RSS, open descriptors, goroutines and CPU
// seconds from its metrics.
func (g *gateway) sample() (s sample, err error) {
	resp, err := g.client.Get("http://" + g.adminAddr + "/metrics")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(value, 64)
		switch name {
		case "process_resident_memory_bytes":
			s.rss = v
		case "process_open_fds":
			s.fds = v
		case "go_goroutines":
			s.goroutines = v
		case "process_cpu_seconds_total":
			s.cpu = v
		}
	}
	return s, sc.Err()
}

type sample struct{ rss, fds, goroutines, cpu float64 }

// bot is one client of sluice; it counts every answer by what it was.
type bot struct {
	c       *http.Client
	markets int
	tally   *tally
}

// tally counts the answers of all bots: by outcome, and latencies.
type tally struct {
	mu        sync.Mutex
	outcomes  map[string]int
	latencies []time.Duration
	firstLost []string
}

// summary is the answers counted and their p99 latency.
func (t *tally) summary() (answers int, p99 time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.outcomes {
		answers += n
	}
	slices.Sort(t.latencies)
	if len(t.latencies) > 0 {
		p99 = t.latencies[len(t.latencies)*99/100]
	}
	return answers, p99
}

func (t *tally) add(outcome string, d time.Duration, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.outcomes[outcome]++
	if d > 0 {
		t.latencies = append(t.latencies, d)
	}
	if (outcome == "lost" || outcome == "wrong") && len(t.firstLost) < 10 {
		t.firstLost = append(t.firstLost, detail)
	}
}

func newBot(g *gateway, markets int, t *tally) *bot { return botOver(g.transport(), markets, t) }

// transport reaches the exchange through sluice.
func (g *gateway) transport() *http.Transport {
	return &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: g.proxyAddr}), TLSClientConfig: g.roots.Clone()}
}

// botOver makes a bot that asks over tr, set up as bots' clients are
// (HTTP/2 where the server offers it, two idle connections).
func botOver(tr *http.Transport, markets int, t *tally) *bot {
	tr.MaxIdleConnsPerHost, tr.ForceAttemptHTTP2 = 2, true
	return &bot{c: &http.Client{Transport: tr, Timeout: 30 * time.Second}, markets: markets, tally: t}
}

// connectBots makes n bots over transports from tr and has each ask
// once, uncounted, before anything is measured: a bot's connection is
// set up once in its life, not once per request.
func connectBots(n, markets int, t *tally, tr func() *http.Transport) []*bot {
	bots := make([]*bot, n)
	warm := &tally{outcomes: map[string]int{}}
	var connecting sync.WaitGroup
	for i := range bots {
		bots[i] = botOver(tr(), markets, warm)
		connecting.Go(func() { bots[i].one(context.Background(), rand.New(rand.NewPCG(0, uint64(i)))) })
	}
	connecting.Wait()
	for _, bt := range bots {
		bt.tally = t
	}
	return bots
}

// closeBots lets the bots' connections go, so that the next row starts
// with its own alone.
func closeBots(bots []*bot) {
	for _, bt := range bots {
		bt.c.CloseIdleConnections()
	}
}

// drive runs the bots for run: at rate answers a second all together,
// each bot on its own point of the period, or (rate 0) each polling
// every 100 ms.
func drive(bots []*bot, rate float64, run time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	for i, bt := range bots {
		if rate > 0 {
			period := time.Duration(float64(len(bots)) / rate * float64(time.Second))
			wg.Go(func() { bt.runEvery(ctx, uint64(i), period*time.Duration(i)/time.Duration(len(bots)), period) })
		} else {
			wg.Go(func() { bt.run(ctx, uint64(i), 100*time.Millisecond) })
		}
	}
	wg.Wait()
}

// one asks for one market's ticker price (or, one request in twenty, one
// of five markets' order book, and one in forty, its open orders, which
// are never cached) and judges the answer: a 200 must be for the symbol asked;
// anything else must be an answer with a reason (sluice's own, or the
// exchange's passed on). A request with no answer is lost.
func (bt *bot) one(ctx context.Context, rng *rand.Rand) {
	symbol := fmt.Sprintf("S%04dUSDT", rng.IntN(bt.markets))
	path := "/api/v3/ticker/price"
	switch rng.IntN(40) {
	case 0, 1:
		symbol = fmt.Sprintf("S%04dUSDT", rng.IntN(5))
		path = "/api/v3/depth"
	case 2:
		// Not cached (a bot's own calls are like this): each one spends
		// budget and meets the upstream's faults, with no stale answer.
		path = "/api/v3/openOrders"
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.binance.com"+path+"?symbol="+symbol, nil)
	start := time.Now()
	resp, err := bt.c.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			bt.tally.add("lost", 0, err.Error())
		}
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil {
		if ctx.Err() == nil { // not the run ending mid-answer
			bt.tally.add("lost", 0, "body: "+err.Error())
		}
		return
	}
	if resp.StatusCode == http.StatusOK {
		var got struct{ Symbol string }
		if json.Unmarshal(body, &got) != nil || got.Symbol != symbol {
			bt.tally.add("wrong", took, fmt.Sprintf("asked %s %s, got %.100s", path, symbol, body))
			return
		}
		bt.tally.add("200 "+strings.ToLower(resp.Header.Get("X-Cache")), took, "")
		return
	}
	who := "upstream"
	if resp.Header.Get("Proxy-Status") != "" || strings.Contains(string(body), `"detail"`) {
		who = "sluice"
	}
	if len(body) == 0 {
		bt.tally.add("wrong", took, fmt.Sprintf("%d with no reason", resp.StatusCode))
		return
	}
	bt.tally.add(fmt.Sprintf("%d %s", resp.StatusCode, who), took, "")
}

// run loops until ctx ends, at most every pause.
func (bt *bot) run(ctx context.Context, seed uint64, pause time.Duration) {
	rng := rand.New(rand.NewPCG(seed, seed))
	for ctx.Err() == nil {
		bt.one(ctx, rng)
		if pause > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
	}
}

// runEvery asks once every period (a request late by more than a period
// is followed by the next at once), from offset on, as a bot on a
// schedule does.
func (bt *bot) runEvery(ctx context.Context, seed uint64, offset, period time.Duration) {
	rng := rand.New(rand.NewPCG(seed, seed))
	select {
	case <-ctx.Done():
		return
	case <-time.After(offset):
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	for ctx.Err() == nil {
		bt.one(ctx, rng)
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// exchangeFor starts the test exchange on 127.0.0.1 and 127.0.0.2 (one
// port), named exchange.soak by the returned resolver.
func exchangeFor(b *testing.B) (*exchange, int, *testdns.Resolver, string) {
	ca := testpki.NewCA(b, "soak exchange CA")
	x := &exchange{}
	srv := ca.Upstream(b, x, "api.binance.com")
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			x.conns.Add(1)
		}
	}
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	second, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
	if err != nil {
		b.Fatalf("the exchange's second address: %v", err)
	}
	go http.Serve(tls.NewListener(second, srv.TLS), x)
	b.Cleanup(func() { second.Close() })
	dns := testdns.Start(b)
	dns.Set("exchange.soak", "127.0.0.1")
	return x, port, dns, ca.WritePEM(b, b.TempDir())
}

// BenchmarkSoak runs 20 bots against sluice for SLUICE_SOAK_DURATION
// (default 10m) while faults come on a schedule, and reports RSS, open
// descriptors and goroutines each minute and every answer by outcome.
func BenchmarkSoak(b *testing.B) {
	duration := 10 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("SLUICE_SOAK_DURATION")); err == nil {
		duration = d
	}
	redis := testredis.Start(b)
	x, port, dns, exchangeCA := exchangeFor(b)
	g := startGateway(b, port, dns.Addr, exchangeCA, fmt.Sprintf("fleet: {redis: %q}\nthrottle: {max_wait: 2s}", redis.URL()))
	for b.Loop() {
		t := &tally{outcomes: map[string]int{}}
		ctx, cancel := context.WithTimeout(context.Background(), duration)
		var wg sync.WaitGroup
		for i := range 20 {
			bt := newBot(g, 100, t)
			wg.Go(func() { bt.run(ctx, uint64(i), 20*time.Millisecond) })
		}
		// The schedule, as fractions of the run: each fault once in the
		// first half and once in the second, a reload every 30 s.
		type event struct {
			at   float64
			what string
			do   func()
		}
		flood := func() {
			var fw sync.WaitGroup
			for i := range 300 {
				bt := newBot(g, 100, t)
				fw.Go(func() { bt.one(ctx, rand.New(rand.NewPCG(uint64(i), 7))); bt.c.CloseIdleConnections() })
			}
			fw.Wait()
		}
		var events []event
		for _, half := range []float64{0, 0.5} {
			events = append(events,
				event{half + 0.10, "429 storm (15 s)", func() {
					x.mode.Store(faultStorm429)
					time.AfterFunc(15*time.Second, func() { x.mode.Store(faultNone) })
				}},
				event{half + 0.17, "418 ban (5 s)", func() { x.mode.Store(faultBan418); time.AfterFunc(5*time.Second, func() { x.mode.Store(faultNone) }) }},
				event{half + 0.24, "upstream stalls (10 s)", func() { x.mode.Store(faultStall); time.AfterFunc(10*time.Second, func() { x.mode.Store(faultNone) }) }},
				event{half + 0.31, "Redis killed", redis.Stop},
				event{half + 0.36, "Redis restarted", redis.Restart},
				event{half + 0.40, "DNS answer changes", func() {
					if half == 0 {
						dns.Set("exchange.soak", "127.0.0.2")
					} else {
						dns.Set("exchange.soak", "127.0.0.1")
					}
				}},
				event{half + 0.45, "client flood (300 new clients at once)", flood},
			)
		}
		for at := 30 * time.Second; at < duration; at += 30 * time.Second {
			n := len(events)
			events = append(events, event{float64(at) / float64(duration), "reload", func() { g.reload(n) }})
		}
		slices.SortFunc(events, func(a, b event) int {
			if a.at < b.at {
				return -1
			}
			return 1
		})
		start := time.Now()
		var samples []sample
		var log []string
		nextSample := start
		for ctx.Err() == nil {
			now := time.Since(start)
			for len(events) > 0 && time.Duration(events[0].at*float64(duration)) <= now {
				e := events[0]
				events = events[1:]
				log = append(log, fmt.Sprintf("%s %s", now.Round(time.Second), e.what))
				go e.do()
			}
			if !time.Now().Before(nextSample) {
				s, err := g.sample()
				if err != nil {
					b.Errorf("minute %d: metrics: %v", len(samples), err)
				}
				samples = append(samples, s)
				nextSample = nextSample.Add(time.Minute)
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
		cancel()
		wg.Wait()
		dns.Set("exchange.soak", "127.0.0.1")
		x.mode.Store(faultNone)
		time.Sleep(5 * time.Second) // what the run left settles (idle connections, fills)
		last, err := g.sample()
		if err != nil {
			b.Fatal(err)
		}
		samples = append(samples, last)
		report(b, duration, samples, log, t, x.requests.Load())
		g.logFailures(5)
	}
}

// report prints the soak's tables and fails on drift, loss or a wrong answer.
func report(b *testing.B, duration time.Duration, samples []sample, events []string, t *tally, upstream int64) {
	var out strings.Builder
	fmt.Fprintf(&out, "\n| minute | RSS MiB | open fds | goroutines |\n|---|---|---|---|\n")
	for i, s := range samples {
		label := strconv.Itoa(i)
		if i == len(samples)-1 {
			label = "end (+5 s idle)"
		}
		fmt.Fprintf(&out, "| %s | %.1f | %.0f | %.0f |\n", label, s.rss/(1<<20), s.fds, s.goroutines)
	}
	total := 0
	fmt.Fprintf(&out, "\n| outcome | answers |\n|---|---|\n")
	for _, k := range slices.Sorted(maps.Keys(t.outcomes)) {
		fmt.Fprintf(&out, "| %s | %d |\n", k, t.outcomes[k])
		total += t.outcomes[k]
	}
	fmt.Fprintf(&out, "| total | %d |\n\nupstream requests: %d\n\nevents:\n", total, upstream)
	for _, e := range events {
		fmt.Fprintf(&out, "- %s\n", e)
	}
	if len(samples) > 3 {
		base, end := samples[2], samples[len(samples)-1]
		drift := func(a, b float64) float64 { return (b - a) / a * 100 }
		fmt.Fprintf(&out, "\ndrift from minute 2 to the end: RSS %+.1f%%, fds %+.1f%%, goroutines %+.1f%%\n",
			drift(base.rss, end.rss), drift(base.fds, end.fds), drift(base.goroutines, end.goroutines))
		for _, d := range []struct {
			what string
			pct  float64
		}{{"RSS", drift(base.rss, end.rss)}, {"open fds", drift(base.fds, end.fds)}, {"goroutines", drift(base.goroutines, end.goroutines)}} {
			if d.pct > 10 {
				b.Errorf("%s grew %.1f%% from minute 2 to the end (goal: under 10%%)", d.what, d.pct)
			}
		}
	}
	if n := t.outcomes["lost"] + t.outcomes["wrong"]; n > 0 {
		b.Errorf("%d answers lost or wrong; the first: %v", n, t.firstLost)
	}
	b.Logf("soak of %s:%s", duration, out.String())
}

// BenchmarkScale measures sluice's CPU per thousand answers, p99 latency
// and RSS as bots grow at 100 markets (5, 50, 500 bots), and as markets
// grow at 5 bots (1,000): CPU per answer should stay flat as bots grow,
// and RSS grow with the keys cached, not with the bots. Each row also
// runs the same bots against a bare HTTPS server, the baseline for
// sluice's CPU per answer in the same run.
func BenchmarkScale(b *testing.B) {
	run, idle := 30*time.Second, 10*time.Second
	if d, err := time.ParseDuration(os.Getenv("SLUICE_SCALE_DURATION")); err == nil {
		run = d
	}
	// SLUICE_SCALE_RATE (answers a second, all bots together) holds the
	// load equal across rows, so that a row differs from the next in its
	// bots alone; unset, each bot polls every 100 ms and the load grows
	// with the bots.
	rate, _ := strconv.ParseFloat(os.Getenv("SLUICE_SCALE_RATE"), 64)
	bare := startBare(b)
	var rows []string
	for _, tt := range []struct{ bots, markets int }{{5, 100}, {50, 100}, {500, 100}, {5, 1000}} {
		b.Run(fmt.Sprintf("bots=%d/markets=%d", tt.bots, tt.markets), func(b *testing.B) {
			x, port, dns, exchangeCA := exchangeFor(b)
			g := startGateway(b, port, dns.Addr, exchangeCA, "throttle: {max_wait: 2s}")
			for b.Loop() {
				t := &tally{outcomes: map[string]int{}}
				bots := connectBots(tt.bots, tt.markets, t, g.transport)
				// What sluice spends with no request at all (timers, the
				// collector), measured first and taken off the load's CPU.
				idleFrom, err := g.sample()
				if err != nil {
					b.Fatal(err)
				}
				time.Sleep(idle)
				before, err := g.sample()
				if err != nil {
					b.Fatal(err)
				}
				idleRate := (before.cpu - idleFrom.cpu) / idle.Seconds()
				drive(bots, rate, run)
				after, err := g.sample()
				if err != nil {
					b.Fatal(err)
				}
				closeBots(bots)
				answers, p99 := t.summary()
				// The same bots on the same schedule, straight to a bare
				// HTTPS server of Go's (HTTP/2, the same answers, nothing
				// of sluice's): what the runtime and the kernel spend per
				// answer at this many connections, the baseline that
				// tells sluice's own growth from theirs.
				bt := &tally{outcomes: map[string]int{}}
				bareBots := connectBots(tt.bots, tt.markets, bt, bare.transport)
				bareBefore, err := bare.cpu()
				if err != nil {
					b.Fatal(err)
				}
				drive(bareBots, rate, run)
				bareAfter, err := bare.cpu()
				if err != nil {
					b.Fatal(err)
				}
				closeBots(bareBots)
				bareAnswers, _ := bt.summary()
				barePerK := (bareAfter - bareBefore) / float64(bareAnswers) * 1000
				cpuPerK := (after.cpu - before.cpu) / float64(answers) * 1000
				netPerK := (after.cpu - before.cpu - idleRate*run.Seconds()) / float64(answers) * 1000
				rows = append(rows, fmt.Sprintf("| %d | %d | %d | %.1f | %.3f | %.3f | %.3f | %.2f | %.2f | %.1f | %d | %d | %d |", tt.bots, tt.markets, answers,
					float64(answers)/run.Seconds(), cpuPerK, netPerK, barePerK, cpuPerK/barePerK, float64(p99.Microseconds())/1000, after.rss/(1<<20), x.requests.Load(), x.conns.Load(),
					t.outcomes["lost"]+t.outcomes["wrong"]))
				b.ReportMetric(cpuPerK, "cpu-s/1k-answers")
				b.ReportMetric(cpuPerK/barePerK, "x-bare-server")
				b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
				b.ReportMetric(after.rss/(1<<20), "rss-MiB")
				if n := t.outcomes["lost"] + t.outcomes["wrong"]; n > 0 {
					b.Errorf("%d answers lost or wrong; the first: %v", n, t.firstLost)
				}
			}
		})
	}
	b.Logf("scale, %s per row (idle CPU measured over %s before each; SLUICE_SCALE_RATE=%q):\n| bots | markets | answers | answers/s | sluice CPU s per 1k answers | the same less idle CPU | bare server CPU s per 1k answers | sluice / bare | p99 ms | RSS MiB | upstream requests | upstream connections | lost or wrong |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n%s",
		run, idle, os.Getenv("SLUICE_SCALE_RATE"), strings.Join(rows, "\n"))
}

func poolOf(b *testing.B, pem []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		b.Fatal("sluice's ca.pem holds no certificate")
	}
	return p
}
