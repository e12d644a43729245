package proxy_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"maps"
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

	"github.com/coder/websocket"

	"sluice/internal/store/redisstore"
	"sluice/internal/testenv"
	"sluice/internal/testexchange"
	"sluice/internal/testpki"
	"sluice/internal/testredis"
)

// streamHarness is sluice before a test exchange that serves Binance's
// streams at stream.binance.com (ports 9443 and 443, as the embedded
// default lists it) and its REST API at api.binance.com.
func streamHarness(t *testing.T, x *testexchange.Binance, streamsYAML string) *harness {
	t.Helper()
	x.Start(t.Context())
	upCA := testpki.NewCA(t, "exchange CA")
	up := upCA.Upstream(t, x, "stream.binance.com", "api.binance.com")
	caPath := upCA.WritePEM(t, t.TempDir())
	addr := up.Listener.Addr().String()
	return newHarness(t, upstreamEntry(t, "stream.binance.com", caPath, addr, "    profile: binance\n    ports: [9443, 443]\n"+streamsYAML)+
		upstreamEntry(t, "api.binance.com", caPath, addr, "    profile: binance\n"))
}

// wsClient is a bot's WebSocket through sluice.
type wsClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func (h *harness) dialWS(t *testing.T, rawURL string) *wsClient {
	return h.dialWSWith(t, rawURL, &net.Dialer{})
}

// dialWSWith dials through d: a test that needs a client that reads
// slowly gives it a small receive buffer.
func (h *harness) dialWSWith(t *testing.T, rawURL string, d *net.Dialer) *wsClient {
	t.Helper()
	tr := &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: h.pool()},
		DialContext:     d.DialContext,
	}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s through sluice: %v (HTTP %d)", rawURL, err, status)
	}
	ws.SetReadLimit(1 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &wsClient{t: t, ws: ws}
}

func (c *wsClient) send(msg string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.t.Fatalf("send %s: %v", msg, err)
	}
}

// next reads the next message as a JSON object.
func (c *wsClient) next() map[string]any {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 5*time.Second)
	defer cancel()
	_, msg, err := c.ws.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(msg, &m); err != nil {
		c.t.Fatalf("message %s is not a JSON object: %v", msg, err)
	}
	return m
}

// nextEvent skips answers and returns the next event, with the stream it
// names when combined.
func (c *wsClient) nextEvent() (data map[string]any, stream string) {
	c.t.Helper()
	for range 100 {
		m := c.next()
		if _, ok := m["id"]; ok {
			continue
		}
		if s, ok := m["stream"].(string); ok {
			return m["data"].(map[string]any), s
		}
		return m, ""
	}
	c.t.Fatal("no event in 100 messages")
	return nil, ""
}

// TestSharedStreams: clients on every Binance path and framing share one
// upstream connection with one subscription per stream; each gets its own
// answers (with its ids), its own list and exactly its framing; a stream
// nobody wants is unsubscribed upstream after the linger.
func TestSharedStreams(t *testing.T) {
	x := &testexchange.Binance{}
	h := streamHarness(t, x, "    streams: {linger: 300ms}\n")

	raw := h.dialWS(t, "wss://stream.binance.com:9443/ws/btcusdt@trade")
	combined := h.dialWS(t, "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade")
	live := h.dialWS(t, "wss://stream.binance.com/ws")
	var crowd []*wsClient
	for i := range 10 {
		c := h.dialWS(t, fmt.Sprintf("wss://stream.binance.com:9443/ws/%d", i))
		c.send(fmt.Sprintf(`{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@ticker"],"id":%d}`, 100+i))
		crowd = append(crowd, c)
	}

	live.send(`{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@ticker"],"id":7}`)
	if m := live.next(); m["id"] != 7.0 || m["result"] != nil {
		t.Fatalf("answer to SUBSCRIBE id 7: %v, want {result: null, id: 7} first", m)
	}
	live.send(`{"method":"LIST_SUBSCRIPTIONS","id":"list1"}`)
	for {
		m := live.next()
		if m["id"] == "list1" {
			got := fmt.Sprint(m["result"])
			if got != "[btcusdt@trade ethusdt@ticker]" {
				t.Errorf("LIST_SUBSCRIPTIONS: %s, want this client's own two streams", got)
			}
			break
		}
	}
	for i, c := range crowd {
		if m := c.next(); m["id"] != float64(100+i) {
			t.Errorf("client %d: first message %v, want the answer with its id %d", i, m, 100+i)
		}
	}

	// Framing: raw events for /ws, combined for /stream.
	if ev, stream := raw.nextEvent(); stream != "" || ev["e"] != "trade" || ev["s"] != "BTCUSDT" {
		t.Errorf("raw client got %v (stream %q), want a raw BTCUSDT trade", ev, stream)
	}
	seen := map[string]bool{}
	for range 20 {
		ev, stream := combined.nextEvent()
		if stream == "" || !strings.HasSuffix(stream, "@trade") || ev["e"] != "trade" {
			t.Fatalf("combined client got %v (stream %q), want combined trades", ev, stream)
		}
		seen[stream] = true
	}
	if !seen["btcusdt@trade"] || !seen["ethusdt@trade"] {
		t.Errorf("combined client saw streams %v, want both of its own", seen)
	}
	live.send(`{"method":"SET_PROPERTY","params":["combined",true],"id":9}`)
	for {
		m := live.next()
		if m["id"] == 9.0 {
			break
		}
	}
	if _, stream := live.nextEvent(); stream == "" {
		t.Error("after SET_PROPERTY combined true, events are still raw")
	}

	// Trade ids are consecutive for every client: nothing lost or doubled.
	for i, c := range crowd[:3] {
		var last float64
		for range 10 {
			ev, _ := c.nextEvent()
			if ev["e"] != "trade" || ev["s"] != "BTCUSDT" {
				continue
			}
			if id := ev["t"].(float64); last != 0 && id != last+1 {
				t.Fatalf("client %d: trade %v after %v", i, id, last)
			} else {
				last = id
			}
		}
	}

	// sluice paces its subscribe requests under the exchange's message
	// limit: the last may still be on its way.
	waitFor(t, "three streams subscribed upstream", func() bool { return len(x.Subscribed()) == 3 })
	if x.ConnsOpened.Load() != 1 {
		t.Errorf("sluice opened %d upstream connections for 13 clients, want 1", x.ConnsOpened.Load())
	}
	for s, n := range x.Subscribed() {
		if n != 1 {
			t.Errorf("upstream subscriptions of %s: %d, want 1", s, n)
		}
	}
	// What sluice status and the dashboard list.
	hubs := h.gw.Deps.Streams.Status()
	if len(hubs) != 1 || hubs[0].Host != "stream.binance.com" || hubs[0].Connections != 1 || hubs[0].Clients != 13 || len(hubs[0].Streams) != 3 {
		t.Errorf("streams status: %+v, want stream.binance.com with 1 upstream connection, 13 clients and 3 streams", hubs)
	} else if s := hubs[0].Streams[0]; s.Name != "btcusdt@trade" || s.Clients != 13 {
		t.Errorf("the stream with most clients: %+v, want btcusdt@trade with all 13", s)
	}
	if got := h.metricOf("sluice_streams_subscriptions", "host", "stream.binance.com"); got != 3 {
		t.Errorf("sluice_streams_subscriptions = %v, want 3", got)
	}
	checkDelayCounted(t, h, "stream.binance.com")

	// A private stream cannot be shared: the exchange's own error, with the id.
	live.send(`{"method":"SUBSCRIBE","params":["pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1"],"id":11}`)
	for {
		m := live.next()
		if m["id"] == 11.0 {
			if m["code"] != 2.0 || !strings.Contains(fmt.Sprint(m["msg"]), "listenKey") {
				t.Errorf("SUBSCRIBE to a listen key: %v, want code 2 naming /ws/<listenKey>", m)
			}
			break
		}
	}

	// Everyone leaves: after the linger, nothing is subscribed upstream.
	for _, c := range append(crowd, raw, combined, live) {
		c.ws.Close(websocket.StatusNormalClosure, "")
	}
	waitFor(t, "upstream unsubscribed after the linger", func() bool { return len(x.Subscribed()) == 0 && x.ConnsOpen.Load() == 0 })
	waitFor(t, "one access line per session", func() bool {
		n := 0
		for _, l := range h.accessLines() {
			if l["stream"] == "shared" {
				n++
			}
		}
		return n == 13
	})
	for _, l := range h.accessLines() {
		if l["stream"] == "shared" && l["path"] == "/stream" {
			if l["status"] != 101.0 || l["subscriptions"] != 2.0 || l["messages_out"].(float64) < 20 || l["bytes_out"].(float64) < 2000 || !strings.HasPrefix(fmt.Sprint(l["close"]), "client") {
				t.Errorf("access line of the combined client: %v", l)
			}
		}
	}
	if slices.ContainsFunc(h.accessLines(), func(l map[string]any) bool { return l["stream"] == "spliced" }) {
		t.Error("a public stream was spliced")
	}
}

// depthBook follows Binance's "how to manage a local order book" recipe
// over a client's diff events and a REST snapshot.
type depthBook struct {
	bids, asks map[string]string
	last       float64 // u of the last event applied
}

func levelsOf(v any) [][2]string {
	var out [][2]string
	for _, l := range v.([]any) {
		pair := l.([]any)
		out = append(out, [2]string{pair[0].(string), pair[1].(string)})
	}
	return out
}

func (b *depthBook) apply(side map[string]string, levels [][2]string) {
	for _, l := range levels {
		if l[1] == "0.000" {
			delete(side, l[0])
		} else {
			side[l[0]] = l[1]
		}
	}
}

// sameBook says whether a client's book (price to quantity) has exactly
// the exchange's levels.
func sameBook(bids, asks [][2]string, haveBids, haveAsks map[string]string) bool {
	levels := func(ls [][2]string) map[string]string {
		m := map[string]string{}
		for _, l := range ls {
			m[l[0]] = l[1]
		}
		return m
	}
	return maps.Equal(levels(bids), haveBids) && maps.Equal(levels(asks), haveAsks)
}

// matches says whether the book equals the exchange's as of its last id.
func (b *depthBook) matches(x *testexchange.Binance, sym string) (bool, string) {
	bids, asks, ok := x.Book(sym, int64(b.last))
	if !ok {
		return false, fmt.Sprintf("the exchange no longer keeps update id %v", b.last)
	}
	if !sameBook(bids, asks, b.bids, b.asks) {
		return false, fmt.Sprintf("at u=%v bids %v asks %v, the exchange has %v %v", b.last, b.bids, b.asks, bids, asks)
	}
	return true, ""
}

// syncBook subscribes c to sym's diff depth, then takes a snapshot through
// sluice (its cache) and syncs to it as ccxt does: the first event kept
// must cover lastUpdateId+1, and each next one continue the last.
func syncBook(t *testing.T, h *harness, c *wsClient, sym string, id int) *depthBook {
	t.Helper()
	stream := strings.ToLower(sym) + "@depth@100ms"
	c.send(fmt.Sprintf(`{"method":"SUBSCRIBE","params":[%q],"id":%d}`, stream, id))
	if m := c.next(); m["id"] != float64(id) {
		t.Fatalf("first message %v, want the answer to SUBSCRIBE", m)
	}
	resp, body := get(t, h.client(false), "https://api.binance.com/api/v3/depth?symbol="+sym+"&limit=1000")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("depth snapshot: %d %s", resp.StatusCode, body)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("depth snapshot %s: %v", body, err)
	}
	b := &depthBook{bids: map[string]string{}, asks: map[string]string{}, last: raw["lastUpdateId"].(float64)}
	b.apply(b.bids, levelsOf(raw["bids"]))
	b.apply(b.asks, levelsOf(raw["asks"]))
	first := true
	for range 1000 {
		ev, _ := c.nextEvent()
		if ev["e"] != "depthUpdate" {
			continue
		}
		U, u := ev["U"].(float64), ev["u"].(float64)
		if u <= b.last && first {
			continue // older than the snapshot
		}
		if first && U > b.last+1 {
			t.Fatalf("the first event after the snapshot (lastUpdateId %v) starts at U=%v: a gap, the book must be fetched again", b.last, U)
		}
		if !first && U != b.last+1 {
			t.Fatalf("event U=%v after u=%v: a gap or a duplicate", U, b.last)
		}
		first = false
		b.apply(b.bids, levelsOf(ev["b"]))
		b.apply(b.asks, levelsOf(ev["a"]))
		b.last = u
		return b
	}
	t.Fatal("no depth event")
	return nil
}

// follow applies n more events to b, each continuing the last.
func (b *depthBook) follow(t *testing.T, c *wsClient, n int) {
	t.Helper()
	for n > 0 {
		ev, _ := c.nextEvent()
		if ev["e"] != "depthUpdate" {
			continue
		}
		if U := ev["U"].(float64); U != b.last+1 {
			t.Fatalf("event U=%v after u=%v: a gap or a duplicate", U, b.last)
		}
		b.apply(b.bids, levelsOf(ev["b"]))
		b.apply(b.asks, levelsOf(ev["a"]))
		b.last = ev["u"].(float64)
		n--
	}
}

// TestLateJoinerBook: a client that joins a depth stream already shared,
// and takes its snapshot from sluice's cache (up to its TTL old), syncs at
// the first try, and its book equals the exchange's at the same update id.
func TestLateJoinerBook(t *testing.T) {
	x := &testexchange.Binance{}
	h := streamHarness(t, x, "")
	first := h.dialWS(t, "wss://stream.binance.com:9443/ws")
	b1 := syncBook(t, h, first, "BTCUSDT", 1) // also fills the cache
	// The next snapshot comes from the cache: a diff stream that only
	// started now would begin well after it.
	time.Sleep(500 * time.Millisecond) // the cached snapshot ages, as it does between bots
	late := h.dialWS(t, "wss://stream.binance.com:9443/ws/1")
	b2 := syncBook(t, h, late, "BTCUSDT", 2)
	if got := h.metric("sluice_cache_requests_total", "result", "hit"); got < 1 {
		t.Fatalf("the late joiner's snapshot was not a cache hit (hits %v): the test proves nothing", got)
	}
	b1.follow(t, first, 20)
	b2.follow(t, late, 20)
	for i, b := range []*depthBook{b1, b2} {
		if ok, why := b.matches(x, "BTCUSDT"); !ok {
			t.Errorf("client %d: %s", i+1, why)
		}
	}
	if x.ConnsOpened.Load() != 1 || x.Subscribed()["btcusdt@depth@100ms"] != 1 {
		t.Errorf("upstream: %d connections, %d subscriptions of the depth stream; want 1 and 1", x.ConnsOpened.Load(), x.Subscribed()["btcusdt@depth@100ms"])
	}
	checkDelayCounted(t, h, "stream.binance.com")
}

// depthClients are n clients, each with its book of sym synced.
func depthClients(t *testing.T, h *harness, n int, sym string) (clients []*wsClient, books []*depthBook) {
	t.Helper()
	for i := range n {
		c := h.dialWS(t, "wss://stream.binance.com:9443/ws")
		books = append(books, syncBook(t, h, c, sym, i+1))
		clients = append(clients, c)
	}
	return clients, books
}

// checkDelayCounted: the delivery delay is observed for the live events
// written to clients, and for nothing else (not the late joiners'
// replayed diffs, which are not live): never more than were fanned out.
func checkDelayCounted(t *testing.T, h *harness, host string) {
	t.Helper()
	delays := h.metricOf("sluice_streams_delivery_delay_seconds", "host", host)
	fanned := h.metricOf("sluice_streams_messages_fanned_out_total", "host", host)
	if delays == 0 || delays > fanned {
		t.Errorf("sluice_streams_delivery_delay_seconds counted %v events of %v fanned out; want some, and no more", delays, fanned)
	}
}

// TestRollover: the exchange closes every connection after a short life
// (announced by serverShutdown), and sluice also replaces its own before
// their lifetime: no client sees a gap, a duplicate or a close.
func TestRollover(t *testing.T) {
	for _, tc := range []struct {
		name, streams string
		x             *testexchange.Binance
	}{
		{"serverShutdown", "", &testexchange.Binance{Lifetime: 800 * time.Millisecond, ShutdownNotice: 300 * time.Millisecond}},
		{"lifetime", "    streams: {lifetime: 800ms}\n", &testexchange.Binance{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := tc.x
			h := streamHarness(t, x, tc.streams)
			clients, books := depthClients(t, h, 3, "ETHUSDT")
			trades := h.dialWS(t, "wss://stream.binance.com:9443/ws/ethusdt@trade")
			// About 3 s: three or four upstream connections in turn.
			for range 6 {
				for i, b := range books {
					b.follow(t, clients[i], 25)
				}
				var last float64
				for range 25 {
					ev, _ := trades.nextEvent()
					if id := ev["t"].(float64); last != 0 && id != last+1 {
						t.Fatalf("trade %v after %v", id, last)
					} else {
						last = id
					}
				}
			}
			for i, b := range books {
				if ok, why := b.matches(x, "ETHUSDT"); !ok {
					t.Errorf("client %d: %s", i+1, why)
				}
			}
			if got := h.metricOf("sluice_streams_rollovers_total", "host", "stream.binance.com", "cause", tc.name); got < 2 {
				t.Errorf("%v rollovers, want at least 2 in 3 s of 800 ms connections", got)
			}
			if x.ConnsOpen.Load() > 2 {
				t.Errorf("%d upstream connections open: replaced ones were not closed", x.ConnsOpen.Load())
			}
		})
	}
}

// TestStandbyDrop: with streams.standby every upstream connection is open
// twice with the same streams, so the exchange dropping one without notice
// (no serverShutdown, no close frame), again and again while it is
// redialed, costs no client an event: books stay in sequence and right,
// trades consecutive. Without a standby the dropped connection is redialed
// and the streams go on in order, after a gap a client can see.
func TestStandbyDrop(t *testing.T) {
	for _, tc := range []struct {
		name, streams string
		legs          int64
	}{
		{"standby", "    streams: {standby: true}\n", 2},
		{"single", "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := &testexchange.Binance{}
			h := streamHarness(t, x, tc.streams)
			clients, books := depthClients(t, h, 3, "ETHUSDT")
			trades := h.dialWS(t, "wss://stream.binance.com:9443/ws/ethusdt@trade")
			var lastTrade float64
			gapless := tc.legs == 2
			follow := func() {
				if gapless {
					for i, b := range books {
						b.follow(t, clients[i], 10)
					}
				}
				for range 10 {
					ev, _ := trades.nextEvent()
					id := ev["t"].(float64)
					if lastTrade != 0 && (id <= lastTrade || gapless && id != lastTrade+1) {
						t.Fatalf("trade %v after %v", id, lastTrade)
					}
					lastTrade = id
				}
			}
			for range 4 {
				testenv.WaitFor(t, 10*time.Second, "every upstream connection open", func() bool {
					follow()
					return x.ConnsOpen.Load() == tc.legs
				})
				if !x.DropOne() {
					t.Fatal("no upstream connection to drop")
				}
			}
			follow()
			if gapless {
				for i, b := range books {
					if ok, why := b.matches(x, "ETHUSDT"); !ok {
						t.Errorf("client %d: %s", i+1, why)
					}
				}
			}
			testenv.WaitFor(t, 10*time.Second, "the last drop redialed", func() bool { return x.ConnsOpen.Load() == tc.legs })
			if got := x.ConnsOpened.Load(); got != 4+tc.legs {
				t.Errorf("the exchange saw %d connections opened, want %d: the first ones and a redial for each drop", got, 4+tc.legs)
			}
			if got := h.metricOf("sluice_streams_upstream_connections", "host", "stream.binance.com"); got != float64(tc.legs) {
				t.Errorf("sluice_streams_upstream_connections %v, want %d", got, tc.legs)
			}
			if got := h.metricOf("sluice_streams_upstream_lost_total", "host", "stream.binance.com", "cause", "dropped"); got != 4 {
				t.Errorf("sluice_streams_upstream_lost_total{cause=dropped} %v, want 4", got)
			}
		})
	}
}

// TestSilentUpstream: an upstream connection that goes silent without a
// close or a reset (a lost route) is pinged after streams.silence, and
// redialed when the ping gets no answer; the streams go on.
func TestSilentUpstream(t *testing.T) {
	x := &testexchange.Binance{}
	x.Start(t.Context())
	upCA := testpki.NewCA(t, "exchange CA")
	up := upCA.Upstream(t, x, "stream.binance.com")
	route := newFreezer(t, up.Listener.Addr().String())
	h := newHarness(t, upstreamEntry(t, "stream.binance.com", upCA.WritePEM(t, t.TempDir()), route.addr(),
		"    profile: binance\n    ports: [9443]\n    streams: {silence: 300ms}\n"))
	c := h.dialWS(t, "wss://stream.binance.com:9443/ws/ethusdt@trade")
	last := func() float64 {
		ev, _ := c.nextEvent()
		return ev["t"].(float64)
	}
	last()
	route.freeze()
	testenv.WaitFor(t, 10*time.Second, "the silent connection redialed", func() bool {
		last()
		return h.metricOf("sluice_streams_upstream_dials_total", "host", "stream.binance.com", "result", "ok") == 2
	})
	if a, b := last(), last(); b <= a {
		t.Errorf("trade %v after %v on the redialed connection", b, a)
	}
	if got := h.metricOf("sluice_streams_upstream_lost_total", "host", "stream.binance.com", "cause", "silent"); got != 1 {
		t.Errorf("sluice_streams_upstream_lost_total{cause=silent} %v, want 1", got)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "no answer to a ping") {
		t.Errorf("no warning of the silent connection in the log:\n%s", logs)
	}
}

// freezer forwards TCP connections to an address until frozen: from then
// on the connections open stay open and pass nothing either way, as when
// a route is lost; new ones pass.
type freezer struct {
	ln     net.Listener
	to     string
	mu     sync.Mutex
	frozen []*atomic.Bool
}

func newFreezer(t *testing.T, to string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, to: to}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			frozen := &atomic.Bool{}
			f.mu.Lock()
			f.frozen = append(f.frozen, frozen)
			f.mu.Unlock()
			pass := func(dst, src net.Conn) {
				defer dst.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if frozen.Load() {
						<-done
						return
					}
					if n > 0 {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			go pass(out, in)
			go pass(in, out)
		}
	}()
	return f
}

func (f *freezer) addr() string { return f.ln.Addr().String() }

func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fr := range f.frozen {
		fr.Store(true)
	}
}

// TestSlowClient: a client that stops reading is closed once its queue
// is full, with the reason logged and counted; the others go on without
// a gap.
func TestSlowClient(t *testing.T) {
	x := &testexchange.Binance{Step: 5 * time.Millisecond}
	h := streamHarness(t, x, "    streams: {client_queue: 64KiB}\n")
	var names []string
	for _, sym := range []string{"btcusdt", "ethusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt", "dogeusdt", "trxusdt"} {
		names = append(names, sym+"@depth@100ms", sym+"@trade")
	}
	url := "wss://stream.binance.com:9443/stream?streams=" + strings.Join(names, "/")
	// The stuck client never reads; its small receive buffer makes sluice's
	// writes block soon, as they would for a bot stuck far away.
	h.dialWSWith(t, url, &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}})
	good := h.dialWS(t, "wss://stream.binance.com:9443/ws")
	b := syncBook(t, h, good, "BTCUSDT", 1)
	testenv.WaitFor(t, 30*time.Second, "the stuck client closed", func() bool {
		b.follow(t, good, 10)
		return h.metricOf("sluice_streams_clients_dropped_total", "host", "stream.binance.com", "reason", "slow") == 1
	})
	b.follow(t, good, 50)
	if ok, why := b.matches(x, "BTCUSDT"); !ok {
		t.Error(why)
	}
	waitFor(t, "the stuck client's access line", func() bool {
		return slices.ContainsFunc(h.accessLines(), func(l map[string]any) bool {
			return l["path"] == "/stream" && strings.Contains(fmt.Sprint(l["close"]), "client too slow") && l["level"] == "WARN"
		})
	})
}

// TestStreamLimits: 50 bots start at once, each with 4 connections that
// subscribe one stream per message at ccxt's pace, and one bot floods 60
// subscribe requests at once: the exchange sees one connection, a few
// paced subscribe requests, and never closes or refuses anything.
func TestStreamLimits(t *testing.T) {
	x := &testexchange.Binance{Step: 100 * time.Millisecond, ConnLimit: 5, ConnWindow: time.Minute}
	h := streamHarness(t, x, "")
	syms := []string{"btcusdt", "ethusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt", "dogeusdt", "trxusdt", "ltcusdt", "dotusdt"}
	errs := make(chan error, 300)
	done := make(chan struct{})
	for bot := range 50 {
		for conn := range 4 {
			go stormBot(t.Context(), h, fmt.Sprintf("wss://stream.binance.com:9443/ws/%d", conn), syms, bot+conn, errs, done)
		}
	}
	flood := h.dialWS(t, "wss://stream.binance.com:9443/ws")
	for i := range 60 {
		flood.send(fmt.Sprintf(`{"method":"SUBSCRIBE","params":["%s@kline_%dm"],"id":%d}`, syms[i%len(syms)], 1+i/len(syms), i))
	}
	for i := 0; i < 60; {
		m := flood.next()
		if _, ok := m["id"]; !ok {
			continue // an event of a stream answered already
		}
		if m["id"] != float64(i) || m["result"] != nil {
			t.Fatalf("flood: answer %d is %v", i, m)
		}
		i++
	}
	defer close(done)
	for range 200 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every stream subscribed upstream", func() bool { return len(x.Subscribed()) == 30+60 })
	if x.ConnsOpened.Load() != 1 || x.Closed1008.Load() != 0 || x.Rejected429.Load() != 0 {
		t.Errorf("exchange: %d connections opened, %d closed for too many messages, %d refused; want 1, 0, 0",
			x.ConnsOpened.Load(), x.Closed1008.Load(), x.Rejected429.Load())
	}
	if n := x.SubscribeMessages.Load(); n > 10 {
		t.Errorf("%d subscribe requests reached the exchange for 210 clients' 660, want a few batches", n)
	}
}

// stormBot is one connection of a bot starting with the storm: three
// subscribes at ccxt's pace and three messages read, reported on ready
// (nil: all went well); it stays connected until done. It runs on its own
// goroutine, so it reports instead of failing.
func stormBot(ctx context.Context, h *harness, rawURL string, syms []string, n int, ready chan<- error, done <-chan struct{}) {
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}), TLSClientConfig: &tls.Config{RootCAs: h.pool()}}
	defer tr.CloseIdleConnections()
	ws, err := stormSubscribe(ctx, tr, rawURL, syms, n)
	ready <- err
	if ws != nil {
		<-done
		ws.CloseNow()
	}
}

func stormSubscribe(ctx context.Context, tr *http.Transport, rawURL string, syms []string, n int) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", rawURL, err)
	}
	for i := range 3 {
		s := syms[(n+i)%len(syms)] + []string{"@trade", "@ticker", "@depth@100ms"}[i]
		if err := ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"method":"SUBSCRIBE","params":[%q],"id":%d}`, s, i)); err != nil {
			return ws, err
		}
		time.Sleep(250 * time.Millisecond) // ccxt's pace
	}
	for range 3 {
		if _, _, err := ws.Read(ctx); err != nil {
			return ws, err
		}
	}
	return ws, nil
}

// ccxtProScript runs SLUICE_TEST_BOTS ccxt pro bots through sluice, half
// of them joining 400 ms after the first book synced: each watches a
// ticker, one minute candles and the order book of BTC/USDT, and prints
// its book.
const ccxtProScript = `
const ccxt = require("ccxt");
const proxy = process.env.SLUICE_TEST_PROXY;
const bots = +process.env.SLUICE_TEST_BOTS;
const sym = "BTC/USDT";
const progress = {};
setTimeout(() => { console.error("timed out; where each bot is:", JSON.stringify(progress)); process.exit(2); }, 60000).unref();
let firstBook;
const firstBookSynced = new Promise(r => { firstBook = r; });
async function bot(i) {
  // The late half joins once the book is shared and its cached snapshot
  // has aged: their first events must still cover that snapshot.
  if (i >= bots / 2) {
    await firstBookSynced;
    await new Promise(r => setTimeout(r, 400));
  }
  const ex = new ccxt.pro.binance({httpsProxy: proxy, wssProxy: proxy, timeout: 10000, options: {fetchMarkets: {types: ["spot"]}}});
  progress[i] = "proxy modules";
  await ex.loadProxyModules(); // ccxt's WebSockets reach a proxy through https-proxy-agent
  progress[i] = "markets";
  await ex.loadMarkets();
  progress[i] = "ticker";
  const t = await ex.watchTicker(sym);
  progress[i] = "candles";
  const k = await ex.watchOHLCV(sym, "1m");
  let ob;
  for (let n = 0; n < 30; n++) {
    progress[i] = "book " + n;
    ob = await ex.watchOrderBook(sym);
    if (n === 5) firstBook();
  }
  progress[i] = "done";
  // Copied now: ccxt goes on updating the book until the exchange closes.
  const copy = side => side.map(l => [l[0], l[1]]);
  const book = {bot: i, last: t.last, candles: k.length, nonce: ob.nonce, bids: copy(ob.bids), asks: copy(ob.asks)};
  await ex.close();
  return book;
}
(async () => {
  const out = await Promise.all(Array.from({length: bots}, (_, i) => bot(i)));
  console.log(JSON.stringify(out));
})().catch(e => { console.error(String(e && e.stack || e)); process.exit(1); });
`

// TestCcxtProThroughSharedStreams: 20 ccxt pro bots (npm's ccxt, as
// freqtrade's stack uses it), late joiners included, watch a ticker,
// candles and a book through sluice: sluice holds one upstream connection
// with one subscription per stream, every bot's book syncs at the first
// try (one snapshot each, no resync) and equals the exchange's at its
// update id.
func TestCcxtProThroughSharedStreams(t *testing.T) {
	node := testenv.RequireTool(t, "node", "nodejs")
	modules := testenv.RequireNodeModule(t, "ccxt")
	testenv.RequireNodeModule(t, "http-proxy-agent") // ccxt loads it with https-proxy-agent
	x := &testexchange.Binance{}
	h := streamHarness(t, x, "")
	caFile := filepath.Join(t.TempDir(), "sluice-ca.pem")
	if err := os.WriteFile(caFile, h.root.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	const bots = 20
	cmd := exec.CommandContext(t.Context(), node, "-e", ccxtProScript)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "NODE_EXTRA_CA_CERTS="+caFile, "SLUICE_TEST_PROXY=http://"+h.proxyAddr,
		fmt.Sprintf("SLUICE_TEST_BOTS=%d", bots), "HTTPS_PROXY=", "https_proxy=", "NO_PROXY=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ccxt pro bots through sluice: %v\n%s", err, stderr.String())
	}
	var books []struct {
		Bot        int
		Last       float64
		Candles    int
		Nonce      int64
		Bids, Asks [][2]float64
	}
	if err := json.Unmarshal(out, &books); err != nil || len(books) != bots {
		t.Fatalf("ccxt printed %s (%v), want %d books", out, err, bots)
	}
	for _, b := range books {
		bids, asks, ok := x.Book("BTCUSDT", b.Nonce)
		if !ok {
			t.Errorf("bot %d: book at nonce %d, which is no update id the exchange kept", b.Bot, b.Nonce)
			continue
		}
		for side, got := range map[string][][2]float64{"bids": b.Bids, "asks": b.Asks} {
			want := floats(map[string][][2]string{"bids": bids, "asks": asks}[side])
			if d := firstDifference(got, want); d != "" {
				t.Errorf("bot %d: %s at update id %d differ from the exchange's: %s", b.Bot, side, b.Nonce, d)
			}
		}
		if b.Last == 0 || b.Candles == 0 {
			t.Errorf("bot %d: ticker last %v, %d candles", b.Bot, b.Last, b.Candles)
		}
	}
	snapshots := 0
	for _, l := range h.accessLines() {
		if l["path"] == "/api/v3/depth" {
			snapshots++
		}
	}
	if snapshots != bots {
		t.Errorf("%d depth snapshots for %d bots: a book resynced", snapshots, bots)
	}
	if x.ConnsOpened.Load() != 1 {
		t.Errorf("%d upstream connections for %d ccxt pro bots, want 1", x.ConnsOpened.Load(), bots)
	}
	for s, n := range x.Subscribed() {
		if n != 1 {
			t.Errorf("%s subscribed %d times upstream", s, n)
		}
	}
}

func firstDifference(got, want [][2]float64) string {
	for i := range max(len(got), len(want)) {
		switch {
		case i >= len(got):
			return fmt.Sprintf("level %d missing (the exchange has %v)", i, want[i])
		case i >= len(want):
			return fmt.Sprintf("level %d is %v, which the exchange does not have", i, got[i])
		case got[i] != want[i]:
			return fmt.Sprintf("level %d is %v, the exchange's %v", i, got[i], want[i])
		}
	}
	return ""
}

func floats(levels [][2]string) [][2]float64 {
	out := make([][2]float64, len(levels))
	for i, l := range levels {
		out[i][0], _ = strconv.ParseFloat(l[0], 64)
		out[i][1], _ = strconv.ParseFloat(l[1], 64)
	}
	return out
}

// aiohttpStreams reaches Binance's streams the way freqtrade's stack does:
// aiohttp's ws_connect through the proxy, trusting sluice's CA; two
// connections, raw and combined, print what they got.
const aiohttpStreams = `
import asyncio, json, ssl, sys, aiohttp
async def read(s, url, n, ctx):
    out = []
    async with s.ws_connect(url, proxy=sys.argv[1], ssl=ctx, heartbeat=20) as ws:
        while len(out) < n:
            msg = await asyncio.wait_for(ws.receive(), 10)
            out.append(json.loads(msg.data))
    return out
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    async with aiohttp.ClientSession() as s:
        raw, combined = await asyncio.gather(
            read(s, "wss://stream.binance.com:9443/ws/ethusdt@trade", 20, ctx),
            read(s, "wss://stream.binance.com:9443/stream?streams=ethusdt@trade/ethusdt@depth@100ms", 20, ctx))
    print(json.dumps({"raw": raw, "combined": combined}))
asyncio.run(main())
`

// TestAiohttpThroughSharedStreams: Python aiohttp (Debian's
// python3-aiohttp) gets raw and combined frames through sluice, trade ids
// without a gap, over one upstream connection.
func TestAiohttpThroughSharedStreams(t *testing.T) {
	python := ""
	for _, p := range []string{"python3", "/usr/bin/python3"} { // a pyenv python3 may lack Debian's modules
		if python == "" && exec.Command(p, "-c", "import aiohttp").Run() == nil {
			python = p
		}
	}
	if python == "" {
		testenv.RequireTool(t, "python3-aiohttp")
	}
	x := &testexchange.Binance{}
	h := streamHarness(t, x, "")
	caFile := filepath.Join(t.TempDir(), "sluice-ca.pem")
	if err := os.WriteFile(caFile, h.root.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), python, "-c", aiohttpStreams, "http://"+h.proxyAddr, caFile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("aiohttp through sluice: %v\n%s", err, stderr.String())
	}
	var got struct{ Raw, Combined []map[string]any }
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("aiohttp printed %s: %v", out, err)
	}
	var last float64
	for _, ev := range got.Raw {
		if ev["e"] != "trade" || ev["stream"] != nil {
			t.Fatalf("raw connection got %v", ev)
		}
		if id := ev["t"].(float64); last != 0 && id != last+1 {
			t.Errorf("trade %v after %v", id, last)
		}
		last = ev["t"].(float64)
	}
	for _, ev := range got.Combined {
		if s, _ := ev["stream"].(string); s != "ethusdt@trade" && s != "ethusdt@depth@100ms" {
			t.Fatalf("combined connection got %v", ev)
		}
	}
	if x.ConnsOpened.Load() != 1 {
		t.Errorf("%d upstream connections, want 1", x.ConnsOpened.Load())
	}
}

// bybitBook follows a Bybit book: a snapshot resets it, deltas change it.
type bybitBook struct {
	bids, asks map[string]string
	u          float64
}

// check: the book equals the exchange's at the same update id.
func (b *bybitBook) check(t *testing.T, x *testexchange.Bybit, sym string) {
	t.Helper()
	bids, asks, ok := x.Book(sym, int64(b.u))
	if !ok || !sameBook(bids, asks, b.bids, b.asks) {
		t.Errorf("%s book at u=%v differs from the exchange's", sym, b.u)
	}
}

func (b *bybitBook) take(t *testing.T, m map[string]any) {
	t.Helper()
	data := m["data"].(map[string]any)
	u := data["u"].(float64)
	switch m["type"] {
	case "snapshot":
		b.bids, b.asks = map[string]string{}, map[string]string{}
	case "delta":
		if b.bids == nil {
			t.Fatalf("a delta (u=%v) before any snapshot", u)
		}
		if u != b.u+1 {
			t.Fatalf("delta u=%v after u=%v: a gap or a duplicate", u, b.u)
		}
	}
	for side, levels := range map[string]map[string]string{"b": b.bids, "a": b.asks} {
		for _, l := range levelsOf(data[side]) {
			if l[1] == "0.000" {
				delete(levels, l[0])
			} else {
				levels[l[0]] = l[1]
			}
		}
	}
	b.u = u
}

// TestBybitSharedStreams: Bybit v5 clients share one upstream connection
// per market; sluice answers subscribe (with the client's req_id) and
// ping itself, splits a subscribe of more topics than Bybit takes at
// once, and gives a late joiner a snapshot of the current book and the
// whole ticker, after which its book follows the exchange's exactly.
func TestBybitSharedStreams(t *testing.T) {
	x := &testexchange.Bybit{}
	h := bybitHarness(t, x, "")

	next := func(c *wsClient, topic string) map[string]any {
		t.Helper()
		for range 500 {
			if m := c.next(); m["topic"] == topic {
				return m
			}
		}
		t.Fatalf("no %s event", topic)
		return nil
	}
	first := h.dialWS(t, "wss://stream.bybit.com/v5/public/linear")
	first.send(`{"req_id":"a1","op":"subscribe","args":["orderbook.50.BTCUSDT","publicTrade.BTCUSDT","tickers.BTCUSDT"]}`)
	if m := first.next(); m["req_id"] != "a1" || m["op"] != "subscribe" || m["success"] != true {
		t.Fatalf("answer to the subscribe: %v", m)
	}
	first.send(`{"req_id":"p1","op":"ping"}`)
	b1 := &bybitBook{}
	for b1.bids == nil {
		m := first.next()
		if m["op"] == "ping" {
			if m["req_id"] != "p1" || m["success"] != true {
				t.Errorf("pong: %v", m)
			}
			continue
		}
		if m["topic"] == "orderbook.50.BTCUSDT" {
			b1.take(t, m)
		}
	}
	for range 20 {
		b1.take(t, next(first, "orderbook.50.BTCUSDT"))
	}

	late := h.dialWS(t, "wss://stream.bybit.com/v5/public/linear")
	late.send(`{"req_id":"b1","op":"subscribe","args":["orderbook.50.BTCUSDT","tickers.BTCUSDT"]}`)
	if m := late.next(); m["req_id"] != "b1" || m["success"] != true {
		t.Fatalf("late joiner's answer: %v", m)
	}
	b2 := &bybitBook{}
	book := next(late, "orderbook.50.BTCUSDT")
	if book["type"] != "snapshot" {
		t.Fatalf("the late joiner's first book event is a %v, want the current book as a snapshot", book["type"])
	}
	b2.take(t, book)
	ticker := next(late, "tickers.BTCUSDT")
	if data := ticker["data"].(map[string]any); ticker["type"] != "snapshot" || data["fundingRate"] == nil || data["lastPrice"] == nil {
		t.Errorf("the late joiner's first ticker: %v, want a snapshot with the fields only the exchange's snapshot had", ticker)
	}
	for range 20 {
		b1.take(t, next(first, "orderbook.50.BTCUSDT"))
		b2.take(t, next(late, "orderbook.50.BTCUSDT"))
	}
	for i, b := range []*bybitBook{b1, b2} {
		bids, asks, ok := x.Book("BTCUSDT", int64(b.u))
		if !ok || !sameBook(bids, asks, b.bids, b.asks) {
			t.Errorf("client %d: book at u=%v differs from the exchange's", i+1, b.u)
		}
	}

	// Spot takes 10 topics a subscribe: 12 from one client go in two.
	spot := h.dialWS(t, "wss://stream.bybit.com/v5/public/spot")
	var topics []string
	for _, sym := range testexchange.Symbols[:6] {
		topics = append(topics, fmt.Sprintf("%q,%q", "publicTrade."+sym, "orderbook.50."+sym))
	}
	spot.send(`{"req_id":"s1","op":"subscribe","args":[` + strings.Join(topics, ",") + `]}`)
	if m := spot.next(); m["req_id"] != "s1" || m["success"] != true {
		t.Fatalf("spot subscribe answer: %v", m)
	}
	next(spot, "orderbook.50."+testexchange.Symbols[5])
	if x.ConnsOpened.Load() != 2 || x.Errors.Load() != 0 || x.Pings.Load() != 0 {
		t.Errorf("exchange: %d connections (want one per market, 2), %d errors, %d pings from sluice's clients (want 0, 0)",
			x.ConnsOpened.Load(), x.Errors.Load(), x.Pings.Load())
	}
}

// bybitHarness is sluice before x, started, serving Bybit's streams at
// stream.bybit.com with the bybit profile and streamsYAML.
func bybitHarness(t *testing.T, x *testexchange.Bybit, streamsYAML string) *harness {
	t.Helper()
	x.Start(t.Context())
	upCA := testpki.NewCA(t, "exchange CA")
	up := upCA.Upstream(t, x, "stream.bybit.com")
	return newHarness(t, upstreamEntry(t, "stream.bybit.com", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String(),
		"    profile: bybit\n"+streamsYAML))
}

// TestBybitRollover: sluice replaces its Bybit connections every 800 ms; a
// client's book goes on without a gap or a step back (a replacement's
// snapshot may come through, never an older one) and ends equal to the
// exchange's.
func TestBybitRollover(t *testing.T) {
	x := &testexchange.Bybit{}
	h := bybitHarness(t, x, "    streams: {lifetime: 800ms}\n")
	c := h.dialWS(t, "wss://stream.bybit.com/v5/public/linear")
	c.send(`{"req_id":"r1","op":"subscribe","args":["orderbook.50.ETHUSDT"]}`)
	b := &bybitBook{}
	for n := 0; n < 150; {
		m := c.next()
		if m["topic"] != "orderbook.50.ETHUSDT" {
			continue
		}
		if u := m["data"].(map[string]any)["u"].(float64); m["type"] == "snapshot" && u < b.u {
			t.Fatalf("a snapshot at u=%v after u=%v", u, b.u)
		}
		b.take(t, m)
		n++
	}
	b.check(t, x, "ETHUSDT")
	if got := h.metricOf("sluice_streams_rollovers_total", "host", "stream.bybit.com", "cause", "lifetime"); got < 2 {
		t.Errorf("%v rollovers in 3 s of 800 ms connections, want at least 2", got)
	}
}

// TestBybitStandbyDrop: with streams.standby, Bybit connections dropped
// without notice, one at a time, cost a client's book no delta.
func TestBybitStandbyDrop(t *testing.T) {
	x := &testexchange.Bybit{}
	h := bybitHarness(t, x, "    streams: {standby: true}\n")
	c := h.dialWS(t, "wss://stream.bybit.com/v5/public/linear")
	c.send(`{"req_id":"r1","op":"subscribe","args":["orderbook.50.ETHUSDT"]}`)
	b := &bybitBook{}
	follow := func(n int) {
		for n > 0 {
			if m := c.next(); m["topic"] == "orderbook.50.ETHUSDT" {
				b.take(t, m)
				n--
			}
		}
	}
	for range 4 {
		testenv.WaitFor(t, 10*time.Second, "both upstream connections open", func() bool {
			follow(10)
			return h.metricOf("sluice_streams_upstream_connections", "host", "stream.bybit.com") == 2
		})
		if !x.DropOne() {
			t.Fatal("no upstream connection to drop")
		}
	}
	follow(30)
	b.check(t, x, "ETHUSDT")
	if got := x.ConnsOpened.Load(); got != 6 {
		t.Errorf("the exchange saw %d connections opened, want 6: two and a redial for each drop", got)
	}
}

// TestStreamRefusalsLeaveRESTAlone: when the exchange refuses WebSocket
// upgrades for its connection limit (429 with Retry-After), a spliced
// client gets that 429 and sluice's own shared dial backs off, and the
// REST weight budget of the same exchange is not paused: the next REST
// call is answered by the exchange, not by sluice's 429.
func TestStreamRefusalsLeaveRESTAlone(t *testing.T) {
	x := &testexchange.Binance{ConnLimit: 1, ConnWindow: time.Minute}
	h := streamHarness(t, x, "")
	h.dialWS(t, "wss://stream.binance.com:9443/ws/btcusdt@trade")
	// sluice dials for it on its own goroutine: wait until that took the
	// one connection the exchange allows.
	waitFor(t, "sluice's upstream connection", func() bool { return x.ConnsOpened.Load() == 1 })

	// A user data stream is spliced: the exchange's refusal reaches the client.
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: h.proxyAddr}), TLSClientConfig: &tls.Config{RootCAs: h.pool()}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "wss://stream.binance.com:9443/ws/pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1",
		&websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a spliced upgrade over the exchange's limit: %v (response %v), want the exchange's 429", err, resp)
	}
	// sluice's own dial for a new market (futures' /public prefix) is
	// refused too: it backs off, and counts it.
	c := h.dialWS(t, "wss://stream.binance.com:9443/public/ws")
	c.send(`{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}`)
	waitFor(t, "sluice's refused dial counted", func() bool {
		return h.metricOf("sluice_streams_upstream_dials_total", "host", "stream.binance.com", "result", "failed") >= 1
	})
	for range 3 {
		resp, body := get(t, h.client(false), "https://api.binance.com/api/v3/depth?symbol=ETHUSDT&limit=5")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("REST after the exchange refused upgrades: %d %s, want the exchange's answer", resp.StatusCode, body)
		}
	}
	if got := h.metricOf("sluice_throttle_upstream_limited_total", "budget", "binance-spot", "status", "429"); got != 0 {
		t.Errorf("the REST budget counted %v upstream 429s: an upgrade's refusal reached it", got)
	}
}

// TestFleetStreamConnectionBudget: two sluice instances sharing their
// budgets in Redis (as a fleet does) share the stream connection budget
// too: with room for one new upstream connection a minute, the second
// instance's dial waits instead of opening another; in memory it would not.
func TestFleetStreamConnectionBudget(t *testing.T) {
	x := &testexchange.Binance{}
	x.Start(t.Context())
	upCA := testpki.NewCA(t, "exchange CA")
	up := upCA.Upstream(t, x, "stream.binance.com")
	entry := upstreamEntry(t, "stream.binance.com", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String(),
		"    profile: binance\n    ports: [9443]\n    streams: {connections: {limit: 1, window: 1m}}\n")
	rdb := testredis.Start(t).Client()
	a := newHarnessMeters(t, redisstore.NewMeters(rdb, "fleet:"), entry)
	b := newHarnessMeters(t, redisstore.NewMeters(rdb, "fleet:"), entry)

	ca := a.dialWS(t, "wss://stream.binance.com:9443/ws")
	ca.send(`{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}`)
	if m := ca.next(); m["id"] != 1.0 {
		t.Fatalf("instance a: %v", m)
	}
	cb := b.dialWS(t, "wss://stream.binance.com:9443/ws")
	cb.send(`{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}`)
	waitFor(t, "instance b waiting for the shared connection budget", func() bool {
		return b.metricOf("sluice_throttle_queue_length", "budget", "binance-stream-connections") == 1
	})
	if n := x.ConnsOpened.Load(); n != 1 {
		t.Errorf("%d upstream connections with a shared budget of 1, want 1", n)
	}
}
