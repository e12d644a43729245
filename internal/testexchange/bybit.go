package testexchange

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Bybit is Bybit's v5 public streams (/v5/public/spot and /linear): books
// as a snapshot on subscribe then deltas, trades, and tickers (linear:
// a snapshot then deltas); at most 10 args per spot subscribe; pings
// answered and counted. Set Step before Start.
type Bybit struct {
	// Step is how often every symbol changes. Default 20ms.
	Step time.Duration

	// Counters, for tests.
	ConnsOpened, Pings, Errors, SubscribeMessages atomic.Int64

	mu      sync.Mutex
	step    int64
	books   map[string]*book
	history map[string]map[int64]bookState
	conns   map[*bybitConn]struct{}
}

type bybitConn struct {
	ws     *websocket.Conn
	linear bool
	mu     sync.Mutex
	subs   map[string]bool
	out    chan []byte
	cancel context.CancelFunc
}

// DropOne ends one open connection without a close frame, as a network
// failure does; false when none is open.
func (x *Bybit) DropOne() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return dropOne(x.conns, func(c *bybitConn) *websocket.Conn { return c.ws })
}

// Start runs the exchange's clock until ctx ends.
func (x *Bybit) Start(ctx context.Context) {
	if x.Step == 0 {
		x.Step = 20 * time.Millisecond
	}
	x.books, x.history, x.conns = map[string]*book{}, map[string]map[int64]bookState{}, map[*bybitConn]struct{}{}
	go every(ctx, x.Step, x.tick)
}

// tick runs under the lock whole, so that a subscription (its snapshot)
// falls between two steps.
func (x *Bybit) tick() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.step++
	k := x.step
	conns := make([]*bybitConn, 0, len(x.conns))
	for c := range x.conns {
		conns = append(conns, c)
	}
	var changes []bookChange
	for sym, b := range x.books {
		ch := bookChange{sym: sym}
		ch.bids, ch.asks = b.step(sym, k, "bybit")
		x.history[sym][k] = bookState{bids: b.bids, asks: b.asks}
		delete(x.history[sym], k-2000)
		changes = append(changes, ch)
	}
	now := time.Now().UnixMilli()
	for _, ch := range changes {
		bids, _ := json.Marshal(ch.bids)
		asks, _ := json.Marshal(ch.asks)
		delta := fmt.Appendf(nil, `{"topic":"orderbook.50.%s","type":"delta","ts":%d,"data":{"s":%q,"b":%s,"a":%s,"u":%d,"seq":%d},"cts":%d}`,
			ch.sym, now, ch.sym, bids, asks, k, k*10, now)
		trade := fmt.Appendf(nil, `{"topic":"publicTrade.%s","type":"snapshot","ts":%d,"data":[{"T":%d,"s":%q,"S":"Buy","v":"0.001","p":%q,"L":"PlusTick","i":"%d","BT":false}]}`,
			ch.sym, now, now, ch.sym, price(ch.sym, 1, 0), k)
		tickerDelta := fmt.Appendf(nil, `{"topic":"tickers.%s","type":"delta","data":{"symbol":%q,"lastPrice":%q,"volume24h":"%d"},"cs":%d,"ts":%d}`,
			ch.sym, ch.sym, price(ch.sym, 1, 0), k, k, now)
		for _, c := range conns {
			c.event("orderbook.50."+ch.sym, delta)
			c.event("publicTrade."+ch.sym, trade)
			if c.linear {
				c.event("tickers."+ch.sym, tickerDelta)
			} else {
				c.event("tickers."+ch.sym, x.tickerSnapshotLocked(ch.sym, false))
			}
		}
	}
}

// tickerSnapshotLocked is a whole ticker; linear ones carry funding
// fields that their deltas leave out.
func (x *Bybit) tickerSnapshotLocked(sym string, linear bool) []byte {
	k := x.step
	extra := ""
	if linear {
		extra = `,"fundingRate":"0.0001","nextFundingTime":"1700000000000","markPrice":` + strconv.Quote(price(sym, 0, 0))
	}
	return fmt.Appendf(nil, `{"topic":"tickers.%s","type":"snapshot","data":{"symbol":%q,"lastPrice":%q,"volume24h":"%d"%s},"cs":%d,"ts":%d}`,
		sym, sym, price(sym, 1, 0), k, extra, k, time.Now().UnixMilli())
}

// Book is a symbol's book as of update id u, best first.
func (x *Bybit) Book(sym string, u int64) (bids, asks [][2]string, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	st, ok := x.history[sym][u]
	if !ok {
		return nil, nil, false
	}
	bids, asks = render(sym, st)
	return bids, asks, true
}

func (x *Bybit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	linear := r.URL.Path == "/v5/public/linear"
	if !linear && r.URL.Path != "/v5/public/spot" {
		http.NotFound(w, r)
		return
	}
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	c := &bybitConn{ws: ws, linear: linear, subs: map[string]bool{}, out: make(chan []byte, 4096), cancel: cancel}
	x.ConnsOpened.Add(1)
	x.mu.Lock()
	x.conns[c] = struct{}{}
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		delete(x.conns, c)
		x.mu.Unlock()
	}()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case b := <-c.out:
				if ws.Write(ctx, websocket.MessageText, b) != nil {
					cancel()
					return
				}
			}
		}
	}()
	for {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			return
		}
		var m struct {
			ReqID string   `json:"req_id"`
			Op    string   `json:"op"`
			Args  []string `json:"args"`
		}
		if json.Unmarshal(msg, &m) != nil {
			x.Errors.Add(1)
			continue
		}
		switch m.Op {
		case "ping":
			x.Pings.Add(1)
			c.send(fmt.Appendf(nil, `{"success":true,"ret_msg":"pong","conn_id":"x","req_id":%q,"op":"ping"}`, m.ReqID))
		case "subscribe", "unsubscribe":
			x.SubscribeMessages.Add(1)
			if !linear && len(m.Args) > 10 {
				x.Errors.Add(1)
				c.send(fmt.Appendf(nil, `{"success":false,"ret_msg":"args size >10","conn_id":"x","req_id":%q,"op":%q}`, m.ReqID, m.Op))
				continue
			}
			c.send(fmt.Appendf(nil, `{"success":true,"ret_msg":"","conn_id":"x","req_id":%q,"op":%q}`, m.ReqID, m.Op))
			for _, topic := range m.Args {
				x.subscribe(c, topic, m.Op == "subscribe")
			}
		}
	}
}

// subscribe starts or stops a topic; a book or ticker starts with its
// snapshot, between two steps.
func (x *Bybit) subscribe(c *bybitConn, topic string, on bool) {
	parts := strings.Split(topic, ".")
	sym := parts[len(parts)-1]
	x.mu.Lock()
	defer x.mu.Unlock()
	c.mu.Lock()
	c.subs[topic] = on
	c.mu.Unlock()
	if !on {
		return
	}
	if x.books[sym] == nil {
		x.books[sym] = &book{}
		x.history[sym] = map[int64]bookState{x.step: {}}
	}
	b := x.books[sym]
	k := x.step
	switch parts[0] {
	case "orderbook":
		bids, asks := render(sym, bookState{bids: b.bids, asks: b.asks})
		bj, _ := json.Marshal(bids)
		aj, _ := json.Marshal(asks)
		now := time.Now().UnixMilli()
		c.send(fmt.Appendf(nil, `{"topic":%q,"type":"snapshot","ts":%d,"data":{"s":%q,"b":%s,"a":%s,"u":%d,"seq":%d},"cts":%d}`, topic, now, sym, bj, aj, k, k*10, now))
	case "tickers":
		c.send(x.tickerSnapshotLocked(sym, c.linear))
	}
}

func (c *bybitConn) event(topic string, msg []byte) {
	c.mu.Lock()
	on := c.subs[topic]
	c.mu.Unlock()
	if on {
		c.send(msg)
	}
}

func (c *bybitConn) send(b []byte) {
	select {
	case c.out <- b:
	default:
		c.ws.Close(websocket.StatusTryAgainLater, "slow consumer")
		c.cancel()
	}
}
