package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
	"sluice/internal/testredis"
)

// TestTradeGuardrails: against a test exchange that records every order
// it receives (and checks every signature with the real secret), a bot in
// a tight order loop stops at its per-minute cap while a second bot on the
// same key goes on; an order of a symbol not allowed, one worth more than
// the per-order notional and one sluice cannot value are refused; cancels
// pass; a market order is valued at the price of the last ticker answer,
// refused over the notional cap and passed just under it; a halt refuses a bot's next order but not its cancel, a full halt
// refuses the cancel too, and resume lifts them. Nothing refused reaches
// the exchange.
func TestTradeGuardrails(t *testing.T) {
	upCA := testpki.NewCA(t, "exchange CA")
	var creds atomic.Pointer[[2]string]
	creds.Store(&[2]string{binanceKey, binanceSecret})
	var mu sync.Mutex
	var received []string // "METHOD symbol" of each order request the exchange got
	verify := testExchange(&creds)
	srv := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v3/ticker/price" {
			fmt.Fprintf(w, `{"symbol":%q,"price":"20000.00000000"}`, r.URL.Query().Get("symbol"))
			return
		}
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		mu.Lock()
		received = append(received, r.Method+" "+form.Get("symbol")+r.URL.Query().Get("symbol"))
		mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		verify.ServeHTTP(w, r)
	}), "api.binance.com")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content+"\n"), 0o600)
		return p
	}
	cfg := baseConfig(fmt.Sprintf("  api.binance.com: {profile: binance, upstream_ca: %s, connect_to: %s, allow_private: true}\n", upCA.WritePEM(t, dir), srv.Listener.Addr())) +
		fmt.Sprintf(`keys:
  binance-main: {exchange: binance, key_file: %s, secret_file: %s, limits: {orders_per_day: 5000}}
clients:
  bot1:
    password_file: %s
    hosts: [api.binance.com]
    grants: [read, trade]
    keys: {api.binance.com: binance-main}
    limits: {orders_per_minute: 3, notional_per_order: 500, symbols: [BTCUSDT, ETHUSDT]}
  bot2:
    password_file: %s
    hosts: [api.binance.com]
    grants: [read, trade]
    keys: {api.binance.com: binance-main}
    limits: {orders_per_minute: 100}
  bot3:
    password_file: %s
    hosts: [api.binance.com]
    grants: [read, trade]
    keys: {api.binance.com: binance-main}
    limits: {orders_per_minute: 1}
  bot4:
    password_file: %s
    hosts: [api.binance.com]
    grants: [read, trade]
    keys: {api.binance.com: binance-main}
    limits: {notional_per_order: 500}
groups:
  fleet-a: {clients: [bot1, bot2], limits: {notional_per_day: 50000}}
`, write("k", binanceKey), write("s", binanceSecret), write("bot1.pass", "p1"), write("bot2.pass", "p2"), write("bot3.pass", "p3"), write("bot4.pass", "p4"))
	r := startRun(t, cfg)
	cli := r.cliConfig()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(readBytes(t, filepath.Join(r.dir, "data", "ca.pem")))
	bot := func(name, pass string) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: r.addrs["proxy"], User: url.UserPassword(name, pass)}),
			TLSClientConfig: &tls.Config{RootCAs: pool}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 20 * time.Second}
	}
	bot1, bot2 := bot("bot1", "p1"), bot("bot2", "p2")
	// As ccxt sends them: form bodies signed with the bot's own secret.
	send := func(c *http.Client, method, params string) (int, string) {
		t.Helper()
		return binanceOrder(t, c, method, params, "sluice", placeholderSecret)
	}
	limit := "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=20000"
	cancel := "symbol=BTCUSDT&orderId=1"
	expect := func(what string, code int, body string, wantCode int, wantBody ...string) {
		t.Helper()
		if code != wantCode {
			t.Errorf("%s: %d %s, want %d", what, code, body, wantCode)
		}
		for _, w := range wantBody {
			if !strings.Contains(body, w) {
				t.Errorf("%s: %s, want it to say %q", what, body, w)
			}
		}
	}

	// A tight loop: three orders a minute, then refusals naming the limit.
	for i := range 5 {
		code, body := send(bot1, http.MethodPost, limit)
		if i < 3 {
			expect(fmt.Sprintf("bot1's order %d", i+1), code, body, http.StatusOK)
		} else {
			expect(fmt.Sprintf("bot1's order %d", i+1), code, body, http.StatusForbidden, "trade limit: orders_per_minute", "clients.bot1.limits.orders_per_minute is 3")
		}
	}
	// The third order took bot1 to 80% of its per-minute limit: one warning.
	r.waitLog(`"msg":"trade limit nearly reached"`)
	if n := strings.Count(r.log(), `"limit":"clients.bot1.limits.orders_per_minute"`); n != 1 {
		t.Errorf("%d warnings for clients.bot1.limits.orders_per_minute, want 1:\n%s", n, r.log())
	}
	// The dashboard's numbers show each limit's use.
	statusJSON := func() string { return r.status(t) }
	if st := statusJSON(); !strings.Contains(st, `{"scope":"client:bot1","limit":"orders_per_minute","used":3,"max":3}`) {
		t.Errorf("/status lacks bot1's use of its per-minute limit:\n%s", st)
	}

	// bot2 trades with the same key and goes on.
	for i := range 3 {
		code, body := send(bot2, http.MethodPost, limit)
		expect(fmt.Sprintf("bot2's order %d", i+1), code, body, http.StatusOK)
	}
	code, body := send(bot1, http.MethodPost, strings.Replace(limit, "BTCUSDT", "DOGEUSDT", 1))
	expect("bot1's DOGEUSDT order", code, body, http.StatusForbidden, "trade limit: symbols", "clients.bot1.limits.symbols")
	code, body = send(bot1, http.MethodPost, strings.Replace(limit, "quantity=0.001", "quantity=0.03", 1))
	expect("bot1's order worth 600", code, body, http.StatusForbidden, "notional_per_order", "worth 600, over clients.bot1.limits.notional_per_order 500")
	code, body = send(bot1, http.MethodPost, "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.001")
	expect("bot1's market order by quantity", code, body, http.StatusForbidden, "trade limit: unpriced", "clients.bot1.limits.unpriced: allow")
	code, body = send(bot1, http.MethodDelete, cancel)
	expect("bot1's cancel, over its order limit", code, body, http.StatusOK)

	// A market order is valued at the latest price sluice saw in a ticker answer.
	bot4 := bot("bot4", "p4")
	market := "symbol=BTCUSDT&side=BUY&type=MARKET&quantity="
	code, body = send(bot4, http.MethodPost, market+"0.02")
	expect("a market order before any price of BTCUSDT", code, body, http.StatusForbidden, "trade limit: unpriced")
	if code := status(t, bot4, "https://api.binance.com/api/v3/ticker/price?symbol=BTCUSDT"); code != http.StatusOK {
		t.Fatalf("the ticker: %d", code)
	}
	code, body = send(bot4, http.MethodPost, market+"0.03")
	expect("a market order worth 600 at the ticker's price", code, body, http.StatusForbidden, "notional_per_order", "worth 600, over clients.bot4.limits.notional_per_order 500")
	code, body = send(bot4, http.MethodPost, market+"0.02")
	expect("a market order worth 400 at the ticker's price", code, body, http.StatusOK)

	// A halt: bot2's next order is refused, its cancel passes.
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := Run(context.Background(), append(args, "-c", cli), &out, io.Discard); err != nil {
			t.Fatalf("sluice %v: %v", args, err)
		}
		return out.String()
	}
	if out := run("halt", "--client", "bot2", "--reason", "runaway loop"); !strings.HasPrefix(out, "halted client:bot2 (cancel-only): runaway loop") {
		t.Errorf("sluice halt: %q", out)
	}
	code, body = send(bot2, http.MethodPost, limit)
	expect("bot2's order while halted", code, body, http.StatusForbidden, "trading halted", "runaway loop", "sluice resume")
	code, body = send(bot2, http.MethodDelete, cancel)
	expect("bot2's cancel while halted", code, body, http.StatusOK)
	if out := run("halt", "--list"); !strings.Contains(out, "client:bot2") || !strings.Contains(out, "runaway loop") {
		t.Errorf("sluice halt --list:\n%s", out)
	}
	if st := statusJSON(); !strings.Contains(st, `"halts":[{"scope":"client:bot2","mode":"cancel-only","reason":"runaway loop"`) {
		t.Errorf("/status does not show the halt:\n%s", st)
	}
	run("halt", "--all", "--full", "--reason", "exchange incident")
	code, body = send(bot2, http.MethodDelete, cancel)
	expect("a cancel under a full halt", code, body, http.StatusForbidden, "trading halted", "cancels too")
	run("resume", "--all")
	run("resume", "--client", "bot2")
	code, body = send(bot2, http.MethodPost, limit)
	expect("bot2's order after resume", code, body, http.StatusOK)

	// ccxt from npm: it places and cancels, and the error it raises for
	// the refused order names sluice's reason.
	ccxtRan := false
	t.Run("ccxt", func(t *testing.T) {
		node := testenv.RequireTool(t, "node", "nodejs")
		modules := testenv.RequireNodeModule(t, "ccxt")
		ccxtRan = true
		cmd := exec.Command(node, "-e", ccxtGuardrails)
		cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "NODE_EXTRA_CA_CERTS="+filepath.Join(r.dir, "data", "ca.pem"),
			"SLUICE_TEST_PROXY=http://bot3:p3@"+r.addrs["proxy"], "HTTPS_PROXY=", "https_proxy=", "NO_PROXY=")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "placed, cancelled, refused:") || !strings.Contains(string(out), "trade limit: orders_per_minute") ||
			!strings.Contains(string(out), "clients.bot3.limits.orders_per_minute is 1") {
			t.Errorf("ccxt through sluice's guardrails: %v\n%s", err, out)
		}
	})

	mu.Lock()
	got := strings.Join(received, ", ")
	mu.Unlock()
	// bot1's three and bot2's three orders, bot1's cancel, bot4's order
	// under the cap, bot2's cancel while halted, bot2's order after resume.
	want := strings.Repeat("POST BTCUSDT, ", 6) + "DELETE BTCUSDT, POST BTCUSDT, DELETE BTCUSDT, POST BTCUSDT"
	if ccxtRan {
		want += ", POST BTCUSDT, DELETE BTCUSDT"
	}
	if got != want {
		t.Errorf("the exchange received\n  %s\nwant\n  %s", got, want)
	}
	r.waitLog(`"refused_by":"guardrails"`)
	if m := r.metrics(t); !strings.Contains(m, `sluice_guardrails_refusals_total{limit="orders_per_minute",scope="client:bot1"} 2`) {
		t.Errorf("refusals metric:\n%s", grepLines(m, "sluice_guardrails"))
	}
}

// TestFleetHalt: a halt issued on one of three instances sharing Redis
// refuses the next order on the other two (cancels still pass); with
// Redis gone each keeps the halt it knew; resume on one lifts it on all.
func TestFleetHalt(t *testing.T) {
	redis := testredis.Start(t)
	upCA := testpki.NewCA(t, "exchange CA")
	var creds atomic.Pointer[[2]string]
	creds.Store(&[2]string{binanceKey, binanceSecret})
	srv := upCA.Upstream(t, testExchange(&creds), "api.binance.com")
	caPath := upCA.WritePEM(t, t.TempDir())
	fleet := startFleet(t, 3, redis.URL(), ", timeout: 1s", "hosts:\n"+binanceEntry(caPath, srv)+
		"clients:\n  bot1: {addresses: [127.0.0.1], hosts: [api.binance.com], grants: [read, trade]}\n")
	// The bot signs with the real key itself: no vault here.
	send := func(r *running, method string) int {
		t.Helper()
		code, _ := binanceOrder(t, r.client(), method, "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=20000", binanceKey, binanceSecret)
		return code
	}
	for i, r := range fleet {
		if code := send(r, http.MethodPost); code != http.StatusOK {
			t.Fatalf("an order through instance %d before the halt: %d", i, code)
		}
	}
	cli := func(r *running, args ...string) error {
		return Run(context.Background(), append(args, "-c", r.cliConfig()), io.Discard, io.Discard)
	}
	if err := cli(fleet[0], "halt", "--client", "bot1", "--reason", "fleet test"); err != nil {
		t.Fatal(err)
	}
	for i, r := range fleet[1:] {
		testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("instance %d to hold the halt", i+1), func() bool { return send(r, http.MethodPost) == http.StatusForbidden })
		if code := send(r, http.MethodDelete); code != http.StatusOK {
			t.Errorf("a cancel through instance %d while halted: %d, want it to pass", i+1, code)
		}
	}
	redis.Stop()
	// Once each instance has found Redis gone, the halt stays.
	for i, r := range fleet {
		testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("instance %d to find Redis gone", i), func() bool {
			return strings.Contains(r.metrics(t), "sluice_fleet_redis_up 0")
		})
	}
	for i, r := range fleet {
		if code := send(r, http.MethodPost); code != http.StatusForbidden {
			t.Errorf("an order through instance %d with Redis gone: %d, want the halt it knew", i, code)
		}
	}
	redis.Restart()
	testenv.WaitFor(t, 10*time.Second, "resume on instance 2 once Redis is back", func() bool { return cli(fleet[2], "resume", "--client", "bot1") == nil })
	for i, r := range fleet {
		testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("instance %d to lift the halt", i), func() bool { return send(r, http.MethodPost) == http.StatusOK })
	}
}

// ccxtGuardrails places an order, cancels it and places another over the
// client's per-minute limit, with ccxt's own signing code.
const ccxtGuardrails = `
const ccxt = require("ccxt");
(async () => {
  const binance = new ccxt.binance({apiKey: "sluice", secret: "not-a-secret", httpsProxy: process.env.SLUICE_TEST_PROXY, timeout: 10000});
  await binance.privatePostOrder({symbol: "BTCUSDT", side: "BUY", type: "LIMIT", timeInForce: "GTC", quantity: "0.001", price: "20000"});
  await binance.privateDeleteOrder({symbol: "BTCUSDT", orderId: "1"});
  try {
    await binance.privatePostOrder({symbol: "BTCUSDT", side: "BUY", type: "LIMIT", timeInForce: "GTC", quantity: "0.001", price: "20000"});
    console.log("the third request was not refused");
  } catch (e) {
    console.log("placed, cancelled, refused: " + e.constructor.name + ": " + e.message);
  }
})().catch(e => { console.error(String(e)); process.exit(1); });
`

// TestOpenOrders: open orders are counted across place, cancel and fill:
// a test exchange keeps a book of each order's status; an order over
// open_orders is refused until a cancel, or until the bot asks for its
// open orders after one filled; a market order that fills at once never
// counts as open.
func TestOpenOrders(t *testing.T) {
	upCA := testpki.NewCA(t, "exchange CA")
	var mu sync.Mutex
	status := map[int]string{} // orderId -> NEW, FILLED or CANCELED
	placed := 0
	srv := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		p, _ := url.ParseQuery(string(body))
		for k, v := range r.URL.Query() {
			p[k] = v
		}
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/api/v3/order":
			placed++
			status[placed] = "NEW"
			if p.Get("type") == "MARKET" {
				status[placed] = "FILLED"
			}
			fmt.Fprintf(w, `{"symbol":%q,"orderId":%d,"status":%q}`, p.Get("symbol"), placed, status[placed])
		case r.Method == http.MethodDelete && r.URL.Path == "/api/v3/order":
			id, _ := strconv.Atoi(p.Get("orderId"))
			status[id] = "CANCELED"
			fmt.Fprintf(w, `{"symbol":%q,"orderId":%d,"status":"CANCELED"}`, p.Get("symbol"), id)
		case r.Method == http.MethodGet && r.URL.Path == "/api/v3/openOrders":
			var open []string
			for id := 1; id <= placed; id++ {
				if status[id] == "NEW" {
					open = append(open, fmt.Sprintf(`{"symbol":"BTCUSDT","orderId":%d,"status":"NEW"}`, id))
				}
			}
			fmt.Fprintf(w, "[%s]", strings.Join(open, ","))
		default:
			http.NotFound(w, r)
		}
	}), "api.binance.com")
	r := startRun(t, baseConfig(fmt.Sprintf("  api.binance.com: {profile: binance, upstream_ca: %s, connect_to: %s, allow_private: true}\n", upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr()))+
		"clients:\n  bot: {addresses: [127.0.0.1], hosts: [api.binance.com], grants: [read, trade], limits: {open_orders: 2}}\n")
	c := r.client()
	do := func(method, params string) int {
		t.Helper()
		u := "https://api.binance.com/api/v3/order"
		if method == http.MethodGet {
			u = "https://api.binance.com/api/v3/openOrders?" + params
		}
		var body io.Reader
		if method != http.MethodGet {
			body = strings.NewReader(params)
		}
		req, _ := http.NewRequest(method, u, body)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-MBX-APIKEY", "the-bots-own-key")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	limit := "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=0.001&price=20000"
	steps := []struct {
		what          string
		method, param string
		want          int
	}{
		{"order 1", http.MethodPost, limit, 200},
		{"order 2", http.MethodPost, limit, 200},
		{"a third open order", http.MethodPost, limit, 403},
		{"a market order, filled at once, over the open count", http.MethodPost, "symbol=BTCUSDT&side=BUY&type=MARKET&quoteOrderQty=10", 403},
		{"the cancel of order 1", http.MethodDelete, "symbol=BTCUSDT&orderId=1", 200},
		{"a market order with room for one", http.MethodPost, "symbol=BTCUSDT&side=BUY&type=MARKET&quoteOrderQty=10", 200},
		{"order 4 (the market order never stayed open)", http.MethodPost, limit, 200},
		{"a third open order again", http.MethodPost, limit, 403},
	}
	for _, s := range steps {
		if got := do(s.method, s.param); got != s.want {
			t.Errorf("%s: %d, want %d", s.what, got, s.want)
		}
	}
	// Order 2 fills at the exchange; sluice learns it when the bot asks.
	mu.Lock()
	status[2] = "FILLED"
	mu.Unlock()
	if got := do(http.MethodPost, limit); got != 403 {
		t.Errorf("an order before the bot asked for its open orders: %d, want 403 (sluice still counts order 2)", got)
	}
	if got := do(http.MethodGet, "symbol=BTCUSDT"); got != 200 {
		t.Fatalf("GET openOrders: %d", got)
	}
	if got := do(http.MethodPost, limit); got != 200 {
		t.Errorf("an order after the open-orders answer showed order 2 filled: %d, want 200", got)
	}
}

// TestFleetTradeCounts: with fleet.redis, a client's limits hold for the
// fleet: orders through two instances count together in Redis.
func TestFleetTradeCounts(t *testing.T) {
	redis := testredis.Start(t)
	upCA := testpki.NewCA(t, "exchange CA")
	srv := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"orderId":1,"status":"NEW"}`) }), "api.binance.com")
	caPath := upCA.WritePEM(t, t.TempDir())
	fleet := startFleet(t, 2, redis.URL(), ", timeout: 1s", "hosts:\n"+binanceEntry(caPath, srv)+
		"clients:\n  bot: {addresses: [127.0.0.1], hosts: [api.binance.com], grants: [read, trade], limits: {orders_per_minute: 3}}\n")
	send := func(r *running) int {
		t.Helper()
		code, _ := binanceOrder(t, r.client(), http.MethodPost, "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=1", "", "")
		return code
	}
	a, b := fleet[0], fleet[1]
	for i, tc := range []struct {
		via  *running
		want int
	}{{a, 200}, {a, 200}, {b, 200}, {b, 403}, {a, 403}} {
		if got := send(tc.via); got != tc.want {
			t.Errorf("order %d: %d, want %d (three a minute for the fleet)", i+1, got, tc.want)
		}
	}
}

// binanceOrder sends a Binance order request (form params, with a
// timestamp added) through c, as ccxt sends one: signed with secret, with
// apiKey in X-MBX-APIKEY. It returns the status and the body.
func binanceOrder(t testing.TB, c *http.Client, method, params, apiKey, secret string) (int, string) {
	t.Helper()
	params += "&timestamp=" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	req, _ := http.NewRequest(method, "https://api.binance.com/api/v3/order", strings.NewReader(params+"&signature="+hmacHex256(secret, params)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-MBX-APIKEY", apiKey)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, params, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startFleet starts n instances sharing the Redis at redisURL (fleet
// options after the instance's, e.g. ", cache: true"), each with the rest
// of the config in body (hosts, clients).
func startFleet(t testing.TB, n int, redisURL, fleetOpts, body string) []*running {
	var fleet []*running
	for i := range n {
		fleet = append(fleet, startRun(t, fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\ndata_dir: data\ntimeouts: {shutdown: 5s}\nfleet: {redis: %q, instance: sluice%d%s}\n", redisURL, i, fleetOpts)+body))
	}
	return fleet
}

// binanceEntry is the hosts entry of api.binance.com for a test exchange.
func binanceEntry(caPath string, srv *httptest.Server) string {
	return fmt.Sprintf("  api.binance.com: {profile: binance, upstream_ca: %s, connect_to: %s, allow_private: true}\n", caPath, srv.Listener.Addr())
}
