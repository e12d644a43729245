// Package testexchange is a test exchange of the project's own: Binance's
// public WebSocket market streams (raw and combined framing, SUBSCRIBE and
// the other methods with ids, pings, the connection, message and stream
// limits, the 24-hour close announced by serverShutdown, scaled down) and
// the REST order-book snapshot that goes with its diff-depth streams, so
// that a test can compare any client's book with the exchange's own at
// the same update id.
package testexchange

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Binance is the exchange. Set its fields before Start.
type Binance struct {
	// Step is how often every symbol's book changes (one depth diff, one
	// trade and one ticker per step). Default 20ms.
	Step time.Duration
	// Lifetime closes a connection after this long, with a serverShutdown
	// event ShutdownNotice before. 0: never.
	Lifetime, ShutdownNotice time.Duration
	// MsgLimit is the most messages (JSON, ping, pong) a connection may
	// send in a second; over it the connection is closed with 1008.
	// Default 5.
	MsgLimit int
	// StreamLimit is the most streams per connection. Default 1024.
	StreamLimit int
	// ConnLimit new connections per ConnWindow; past it: HTTP 429.
	// Default 300 per 5 minutes.
	ConnLimit  int
	ConnWindow time.Duration
	// PingEvery is how often the exchange pings each connection. Default 20s.
	PingEvery time.Duration

	// Counters, for tests.
	ConnsOpened, ConnsOpen, MaxOpen, Rejected429, Closed1008, Closed1001 atomic.Int64
	SubscribeMessages                                                    atomic.Int64

	mu       sync.Mutex
	step     int64
	books    map[string]*book // by upper-case symbol
	history  map[string]map[int64]bookState
	conns    map[*conn]struct{}
	connTime []time.Time
	stop     context.CancelFunc
}

// levels is the depth of each side of a book.
const levels = 20

// idsPerStep: step k owns update ids k*idsPerStep+1 .. (k+1)*idsPerStep.
const idsPerStep = 3

type book struct {
	bids, asks [levels]int64 // quantity at each level, in lots
}

type bookState struct{ bids, asks [levels]int64 }

// bookChange is what one step changed of a symbol's book.
type bookChange struct {
	sym        string
	bids, asks [][2]string
}

// step changes two levels a side of sym's book for step k (salt tells
// exchanges apart) and returns the changed levels.
func (b *book) step(sym string, k int64, salt string) (bids, asks [][2]string) {
	for j := range 2 {
		for side := range 2 {
			lvl := int(hash(salt, sym, k, j, side) % levels)
			q := int64(hash(salt, sym, k, j, side, "q") % 5000) // 0 removes the level
			if side == 0 {
				b.bids[lvl] = q
				bids = append(bids, [2]string{price(sym, 0, lvl), lot(q)})
			} else {
				b.asks[lvl] = q
				asks = append(asks, [2]string{price(sym, 1, lvl), lot(q)})
			}
		}
	}
	return bids, asks
}

// Start runs the exchange's clock until ctx ends.
func (x *Binance) Start(ctx context.Context) {
	if x.Step == 0 {
		x.Step = 20 * time.Millisecond
	}
	if x.MsgLimit == 0 {
		x.MsgLimit = 5
	}
	if x.StreamLimit == 0 {
		x.StreamLimit = 1024
	}
	if x.ConnLimit == 0 {
		x.ConnLimit, x.ConnWindow = 300, 5*time.Minute
	}
	if x.PingEvery == 0 {
		x.PingEvery = 20 * time.Second
	}
	if x.ShutdownNotice == 0 {
		x.ShutdownNotice = 200 * time.Millisecond
	}
	x.books, x.history, x.conns = map[string]*book{}, map[string]map[int64]bookState{}, map[*conn]struct{}{}
	ctx, x.stop = context.WithCancel(ctx)
	go every(ctx, x.Step, x.tick)
}

func lot(q int64) string { return strconv.FormatFloat(float64(q)/1000, 'f', 3, 64) }

func price(sym string, side, level int) string {
	base := int64(10000 + int(hash(sym)%1000))
	if side == 0 {
		return strconv.FormatFloat(float64(base-int64(level)-1)/10, 'f', 1, 64)
	}
	return strconv.FormatFloat(float64(base+int64(level)+1)/10, 'f', 1, 64)
}

func hash(parts ...any) uint64 {
	h := fnv.New64a()
	fmt.Fprint(h, parts...)
	return h.Sum64()
}

// tick moves every symbol one step: two levels a side change, one trade.
func (x *Binance) tick() {
	x.mu.Lock()
	x.step++
	k := x.step
	var out []*conn
	for c := range x.conns {
		out = append(out, c)
	}
	var changes []bookChange
	for sym, b := range x.books {
		ch := bookChange{sym: sym}
		ch.bids, ch.asks = b.step(sym, k, "binance")
		h := x.history[sym]
		h[k] = bookState{bids: b.bids, asks: b.asks}
		delete(h, k-2000)
		changes = append(changes, ch)
	}
	x.mu.Unlock()
	now := time.Now().UnixMilli()
	for _, ch := range changes {
		lower := strings.ToLower(ch.sym)
		bids, _ := json.Marshal(ch.bids)
		asks, _ := json.Marshal(ch.asks)
		depth := fmt.Appendf(nil, `{"e":"depthUpdate","E":%d,"s":%q,"U":%d,"u":%d,"b":%s,"a":%s}`, now, ch.sym, (k-1)*idsPerStep+1, k*idsPerStep, bids, asks)
		trade := fmt.Appendf(nil, `{"e":"trade","E":%d,"s":%q,"t":%d,"p":%q,"q":"0.001","T":%d,"m":false}`, now, ch.sym, k, price(ch.sym, 1, 0), now)
		last := price(ch.sym, 1, 0)
		ticker := fmt.Appendf(nil, `{"e":"24hrTicker","E":%d,"s":%q,"p":"0.0","P":"0.0","w":%q,"c":%q,"Q":"0.001","b":%q,"B":"1.000","a":%q,"A":"1.000","o":%q,"h":%q,"l":%q,"v":"%d","q":"1.0","O":%d,"C":%d,"F":1,"L":%d,"n":%d}`,
			now, ch.sym, last, last, price(ch.sym, 0, 0), last, last, last, last, k, now-86400000, now, k, k)
		mini := fmt.Appendf(nil, `{"e":"24hrMiniTicker","E":%d,"s":%q,"c":%q,"o":%q,"h":%q,"l":%q,"v":"%d","q":"1.0"}`, now, ch.sym, last, last, last, last, k)
		minute := now / 60000 * 60000
		kline := fmt.Appendf(nil, `{"e":"kline","E":%d,"s":%q,"k":{"t":%d,"T":%d,"s":%q,"i":"1m","f":1,"L":%d,"o":%q,"c":%q,"h":%q,"l":%q,"v":"1.0","n":%d,"x":false,"q":"1.0","V":"0.5","Q":"0.5","B":"0"}}`,
			now, ch.sym, minute, minute+59999, ch.sym, k, last, last, last, last, k)
		for _, c := range out {
			c.event(lower+"@depth@100ms", depth)
			c.event(lower+"@depth", depth)
			c.event(lower+"@trade", trade)
			c.event(lower+"@ticker", ticker)
			c.event(lower+"@miniTicker", mini)
			c.event(lower+"@kline_1m", kline)
		}
	}
}

// ensure starts keeping a symbol's book (a stream or a snapshot asked for it).
func (x *Binance) ensure(sym string) {
	sym = strings.ToUpper(sym)
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.books[sym] == nil {
		x.books[sym] = &book{}
		x.history[sym] = map[int64]bookState{x.step: {}}
	}
}

// Book is a symbol's book as of update id u (the end of a step): each
// side's levels with a quantity, best first; ok is false when that step
// is no longer kept.
func (x *Binance) Book(sym string, u int64) (bids, asks [][2]string, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	st, ok := x.history[strings.ToUpper(sym)][u/idsPerStep]
	if !ok || u%idsPerStep != 0 {
		return nil, nil, false
	}
	bids, asks = render(sym, st)
	return bids, asks, true
}

func render(sym string, st bookState) (bids, asks [][2]string) {
	sym = strings.ToUpper(sym)
	bids, asks = [][2]string{}, [][2]string{}
	for l := range levels {
		if st.bids[l] > 0 {
			bids = append(bids, [2]string{price(sym, 0, l), lot(st.bids[l])})
		}
		if st.asks[l] > 0 {
			asks = append(asks, [2]string{price(sym, 1, l), lot(st.asks[l])})
		}
	}
	return bids, asks
}

// Symbols are what exchangeInfo lists (ccxt loads its markets from it).
var Symbols = []string{"BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "TRXUSDT", "LTCUSDT", "DOTUSDT"}

func exchangeInfo(w http.ResponseWriter) {
	var syms []string
	for _, s := range Symbols {
		base := strings.TrimSuffix(s, "USDT")
		syms = append(syms, fmt.Sprintf(`{"symbol":%q,"status":"TRADING","baseAsset":%q,"baseAssetPrecision":8,"quoteAsset":"USDT","quotePrecision":8,"quoteAssetPrecision":8,`+
			`"orderTypes":["LIMIT","MARKET"],"icebergAllowed":true,"ocoAllowed":true,"isSpotTradingAllowed":true,"isMarginTradingAllowed":false,`+
			`"filters":[{"filterType":"PRICE_FILTER","minPrice":"0.1","maxPrice":"1000000.0","tickSize":"0.1"},`+
			`{"filterType":"LOT_SIZE","minQty":"0.001","maxQty":"9000.0","stepSize":"0.001"},{"filterType":"NOTIONAL","minNotional":"5.0","maxNotional":"9000000.0"}],`+
			`"permissions":[],"permissionSets":[["SPOT"]],"defaultSelfTradePreventionMode":"EXPIRE_MAKER","allowedSelfTradePreventionModes":["EXPIRE_MAKER"]}`, s, base))
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"timezone":"UTC","serverTime":%d,"rateLimits":[],"exchangeFilters":[],"symbols":[%s]}`, time.Now().UnixMilli(), strings.Join(syms, ","))
}

// ServeHTTP serves /api/v3/exchangeInfo, /api/v3/time, /api/v3/depth and the streams.
func (x *Binance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api/v3/exchangeInfo" {
		exchangeInfo(w)
		return
	}
	if r.URL.Path == "/api/v3/time" {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"serverTime":%d}`, time.Now().UnixMilli())
		return
	}
	if r.URL.Path == "/api/v3/depth" {
		sym := r.URL.Query().Get("symbol")
		if sym == "" {
			http.Error(w, `{"code":-1102,"msg":"Mandatory parameter 'symbol' was not sent."}`, http.StatusBadRequest)
			return
		}
		x.ensure(sym)
		x.mu.Lock()
		b := x.books[strings.ToUpper(sym)]
		st, k := bookState{bids: b.bids, asks: b.asks}, x.step
		x.mu.Unlock()
		bids, asks := render(sym, st)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"lastUpdateId": k * idsPerStep, "bids": bids, "asks": asks})
		return
	}
	x.serveStream(w, r)
}

var streamName = regexp.MustCompile(`^[a-z0-9]+@[a-z0-9_@]+$`)

// conn is one client connection of the exchange.
type conn struct {
	x        *Binance
	ws       *websocket.Conn
	mu       sync.Mutex
	subs     map[string]bool
	combined bool
	out      chan []byte
	ctx      context.Context
	cancel   context.CancelFunc
	received []time.Time // the last second's incoming messages
}

func (x *Binance) serveStream(w http.ResponseWriter, r *http.Request) {
	x.mu.Lock()
	now := time.Now()
	x.connTime = slices.DeleteFunc(x.connTime, func(t time.Time) bool { return now.Sub(t) > x.ConnWindow })
	if len(x.connTime) >= x.ConnLimit {
		x.mu.Unlock()
		x.Rejected429.Add(1)
		w.Header().Set("Retry-After", "60")
		http.Error(w, fmt.Sprintf(`{"code":-1003,"msg":"Too many new connections; current limit is %d per %v per IP."}`, x.ConnLimit, x.ConnWindow), http.StatusTooManyRequests)
		return
	}
	x.connTime = append(x.connTime, now)
	x.mu.Unlock()

	c := &conn{x: x, subs: map[string]bool{}, out: make(chan []byte, 4096)}
	switch {
	case r.URL.Path == "/stream":
		c.combined = true
		for s := range strings.SplitSeq(r.URL.Query().Get("streams"), "/") {
			if streamName.MatchString(s) {
				c.subs[s] = true
			}
		}
	case r.URL.Path == "/ws" || strings.HasPrefix(r.URL.Path, "/ws/"):
		for s := range strings.SplitSeq(strings.TrimPrefix(r.URL.Path, "/ws"), "/") {
			if streamName.MatchString(s) {
				c.subs[s] = true
			}
		}
	default:
		http.NotFound(w, r)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OnPongReceived: func(context.Context, []byte) { c.count() },
		OnPingReceived: func(context.Context, []byte) bool { c.count(); return true },
	})
	if err != nil {
		return
	}
	c.ws = ws
	c.ctx, c.cancel = context.WithCancel(r.Context())
	defer c.cancel()
	for s := range c.subs {
		x.ensure(strings.Split(s, "@")[0])
	}
	x.mu.Lock()
	x.conns[c] = struct{}{}
	x.mu.Unlock()
	x.ConnsOpened.Add(1)
	if n := x.ConnsOpen.Add(1); n > x.MaxOpen.Load() {
		x.MaxOpen.Store(n)
	}
	defer func() {
		x.mu.Lock()
		delete(x.conns, c)
		x.mu.Unlock()
		x.ConnsOpen.Add(-1)
	}()
	go c.write()
	go c.ping()
	if x.Lifetime > 0 {
		go c.expire()
	}
	for {
		_, msg, err := ws.Read(c.ctx)
		if err != nil {
			return
		}
		if !c.count() {
			return
		}
		c.handle(msg)
	}
}

// count notes an incoming message; over the limit it closes the connection.
func (c *conn) count() bool {
	c.mu.Lock()
	now := time.Now()
	c.received = slices.DeleteFunc(c.received, func(t time.Time) bool { return now.Sub(t) >= time.Second })
	c.received = append(c.received, now)
	over := len(c.received) > c.x.MsgLimit
	c.mu.Unlock()
	if over {
		c.x.Closed1008.Add(1)
		c.ws.Close(websocket.StatusPolicyViolation, "Too many messages")
		c.cancel()
	}
	return !over
}

func (c *conn) handle(msg []byte) {
	var rq struct {
		Method string            `json:"method"`
		Params []json.RawMessage `json:"params"`
		ID     json.RawMessage   `json:"id"`
	}
	if err := json.Unmarshal(msg, &rq); err != nil {
		c.send(fmt.Appendf(nil, `{"code":3,"msg":"Invalid JSON: %v"}`, strconv.Quote(err.Error())))
		return
	}
	id := string(rq.ID)
	if id == "" {
		id = "null"
	}
	switch rq.Method {
	case "SUBSCRIBE", "UNSUBSCRIBE":
		c.x.SubscribeMessages.Add(1)
		c.mu.Lock()
		for _, p := range rq.Params {
			var s string
			json.Unmarshal(p, &s)
			if rq.Method == "SUBSCRIBE" {
				c.subs[s] = true
			} else {
				delete(c.subs, s)
			}
		}
		over := len(c.subs) > c.x.StreamLimit
		c.mu.Unlock()
		if over {
			c.send(fmt.Appendf(nil, `{"code":2,"msg":"Invalid request: too many streams","id":%s}`, id))
			return
		}
		for _, p := range rq.Params {
			var s string
			json.Unmarshal(p, &s)
			c.x.ensure(strings.Split(s, "@")[0])
		}
		c.send(fmt.Appendf(nil, `{"result":null,"id":%s}`, id))
	case "LIST_SUBSCRIPTIONS":
		c.mu.Lock()
		var names []string
		for s := range c.subs {
			names = append(names, s)
		}
		c.mu.Unlock()
		slices.Sort(names)
		list, _ := json.Marshal(names)
		c.send(fmt.Appendf(nil, `{"result":%s,"id":%s}`, list, id))
	default:
		c.send(fmt.Appendf(nil, `{"code":2,"msg":"Invalid request: unknown method","id":%s}`, id))
	}
}

// DropOne ends one open connection without a close frame, as a network
// failure does; false when none is open.
func (x *Binance) DropOne() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return dropOne(x.conns, func(c *conn) *websocket.Conn { return c.ws })
}

// dropOne takes one of conns out and ends its WebSocket without a close
// frame.
func dropOne[C comparable](conns map[C]struct{}, ws func(C) *websocket.Conn) bool {
	for c := range conns {
		delete(conns, c)
		ws(c).CloseNow()
		return true
	}
	return false
}

// Subscribed counts the connections subscribed to each stream.
func (x *Binance) Subscribed() map[string]int {
	x.mu.Lock()
	conns := make([]*conn, 0, len(x.conns))
	for c := range x.conns {
		conns = append(conns, c)
	}
	x.mu.Unlock()
	out := map[string]int{}
	for _, c := range conns {
		c.mu.Lock()
		for s := range c.subs {
			out[s]++
		}
		c.mu.Unlock()
	}
	return out
}

func (c *conn) event(stream string, data []byte) {
	c.mu.Lock()
	on, combined := c.subs[stream], c.combined
	c.mu.Unlock()
	if !on {
		return
	}
	if combined {
		data = fmt.Appendf(nil, `{"stream":%q,"data":%s}`, stream, data)
	}
	c.send(data)
}

func (c *conn) send(b []byte) {
	select {
	case c.out <- b:
	default: // a slow consumer
		c.ws.Close(websocket.StatusTryAgainLater, "slow consumer")
		c.cancel()
	}
}

func (c *conn) write() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case b := <-c.out:
			if c.ws.Write(c.ctx, websocket.MessageText, b) != nil {
				c.cancel()
				return
			}
		}
	}
}

func (c *conn) ping() {
	t := time.NewTicker(c.x.PingEvery)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
			err := c.ws.Ping(ctx)
			cancel()
			if err != nil {
				c.cancel()
				return
			}
		}
	}
}

func (c *conn) expire() {
	select {
	case <-c.ctx.Done():
		return
	case <-time.After(c.x.Lifetime - c.x.ShutdownNotice):
	}
	c.send(fmt.Appendf(nil, `{"e":"serverShutdown","E":%d}`, time.Now().UnixMilli()))
	select {
	case <-c.ctx.Done():
		return
	case <-time.After(c.x.ShutdownNotice):
	}
	c.x.Closed1001.Add(1)
	c.ws.Close(websocket.StatusGoingAway, "lifetime")
	c.cancel()
}

// every runs f every d until ctx ends: an exchange's clock.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
