package streams

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// bybit is Bybit's v5 public WebSocket protocol (the "WebSocket Connect"
// and "Orderbook" pages of bybit-exchange.github.io/docs/v5): one market
// per path (/v5/public/spot, linear, inverse, option), {"op":"subscribe",
// "args":[topics],"req_id"}, the client's {"op":"ping"} every 20 s, and
// events that name their topic, a book as a snapshot then deltas.
type bybit struct{}

// bybitTopic is a public topic: orderbook.50.BTCUSDT, publicTrade.BTCUSDT,
// tickers.BTCUSDT, kline.1.BTCUSDT.
var bybitTopic = regexp.MustCompile(`^[A-Za-z]+(\.[A-Za-z0-9_\-]+){1,3}$`)

// bybitMaxArgs is Bybit's limit of topics per subscribe request on spot
// ("up to 10 args for each subscription request").
const bybitMaxArgs = 10

func (bybit) Name() string { return "bybit" }
func (bybit) Batch() int   { return bybitMaxArgs }

// Ping: Bybit expects its clients to ping ("send the ping heartbeat
// packet every 20 seconds").
func (bybit) Ping() []byte { return []byte(`{"op":"ping"}`) }

func (bybit) Session(r *http.Request) (ns string, initial []string, combined, ok bool) {
	switch strings.TrimSuffix(r.URL.Path, "/") {
	case "/v5/public/spot", "/v5/public/linear", "/v5/public/inverse", "/v5/public/option", "/v5/public/spread":
		return strings.TrimSuffix(r.URL.Path, "/"), nil, false, true
	}
	return "", nil, false, false // /v5/private and the trade API are the client's own
}

func (bybit) UpstreamPath(ns string) string { return ns }

func (b bybit) Parse(msg []byte) request {
	var m struct {
		ReqID json.RawMessage   `json:"req_id"`
		Op    string            `json:"op"`
		Args  []json.RawMessage `json:"args"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return request{answer: fmt.Appendf(nil, `{"success":false,"ret_msg":%s,"conn_id":"sluice","op":""}`, jsonText("error:invalid json: "+err.Error()))}
	}
	rq := request{id: bytes.TrimSpace(m.ReqID), verb: m.Op}
	switch m.Op {
	case "subscribe", "unsubscribe":
		rq.op = opSubscribe
		if m.Op == "unsubscribe" {
			rq.op = opUnsubscribe
		}
		for _, a := range m.Args {
			var topic string
			if json.Unmarshal(a, &topic) != nil || !bybitTopic.MatchString(topic) {
				return request{id: rq.id, verb: rq.verb, answer: b.Refuse(rq, "error:invalid topic "+string(a))}
			}
			rq.names = append(rq.names, topic)
		}
	case "ping":
		// Answered by sluice: a client's ping never reaches the exchange.
		rq.answer = fmt.Appendf(nil, `{"success":true,"ret_msg":"pong","conn_id":"sluice",%s"op":"ping"}`, reqIDField(rq.id))
	default:
		rq.answer = b.Refuse(rq, "error:handler not found")
	}
	return rq
}

func reqIDField(id []byte) string {
	if len(id) == 0 {
		return ""
	}
	return `"req_id":` + string(id) + ","
}

func (bybit) Answer(rq request, _ string) []byte {
	return fmt.Appendf(nil, `{"success":true,"ret_msg":"","conn_id":"sluice",%s"op":%s}`, reqIDField(rq.id), jsonText(rq.verb))
}

func (bybit) Refuse(rq request, msg string) []byte {
	return fmt.Appendf(nil, `{"success":false,"ret_msg":%s,"conn_id":"sluice",%s"op":%s}`, jsonText(msg), reqIDField(rq.id), jsonText(rq.verb))
}

func (bybit) Subscribe(names []string, unsubscribe bool, id int64) []byte {
	op := "subscribe"
	if unsubscribe {
		op = "unsubscribe"
	}
	args, _ := json.Marshal(names)
	return fmt.Appendf(nil, `{"req_id":"sluice-%d","op":%q,"args":%s}`, id, op, args)
}

func (bybit) Upstream(msg []byte) upstreamMsg {
	var m struct {
		Topic   string `json:"topic"`
		Success *bool  `json:"success"`
		RetMsg  string `json:"ret_msg"`
		ReqID   string `json:"req_id"`
		Op      string `json:"op"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return upstreamMsg{detail: err.Error()}
	}
	id, _ := strconv.ParseInt(strings.TrimPrefix(m.ReqID, "sluice-"), 10, 64)
	switch {
	case m.Topic != "":
		return upstreamMsg{kind: upstreamEvent, stream: m.Topic, ev: event{raw: msg, combined: msg}}
	case m.Op == "ping" || m.Op == "pong":
		return upstreamMsg{kind: upstreamAnswer}
	case m.Success != nil && *m.Success:
		return upstreamMsg{kind: upstreamAnswer, id: id}
	case m.Success != nil:
		return upstreamMsg{kind: upstreamError, id: id, detail: m.RetMsg}
	}
	return upstreamMsg{detail: "a message sluice does not know"}
}

// State: a client joining a book late gets a snapshot of the current book
// (the exchange sends one on subscribe, then deltas); one joining a
// ticker gets the ticker as it stands (linear and inverse send deltas).
func (bybit) State(stream string, _ *Spec) streamState {
	switch {
	case strings.HasPrefix(stream, "orderbook."):
		return &bybitBook{topic: stream}
	case strings.HasPrefix(stream, "tickers."):
		return &bybitTicker{topic: stream}
	}
	return nil
}

// bybitEvent is the envelope of a Bybit event.
type bybitEvent struct {
	Topic string          `json:"topic"`
	Type  string          `json:"type"`
	TS    int64           `json:"ts"`
	CTS   *int64          `json:"cts,omitempty"`
	CS    *int64          `json:"cs,omitempty"`
	Data  json.RawMessage `json:"data"`
}

type bybitBookData struct {
	Symbol string      `json:"s"`
	Bids   [][2]string `json:"b"`
	Asks   [][2]string `json:"a"`
	U      int64       `json:"u"`
	Seq    int64       `json:"seq"`
}

// bybitBook is a book built from the upstream's snapshot and deltas.
type bybitBook struct {
	topic      string
	seen       bool
	last       bybitEvent
	data       bybitBookData
	bids, asks map[string]string
}

func (b *bybitBook) Add(ev event) {
	var e bybitEvent
	var d bybitBookData
	if json.Unmarshal(ev.raw, &e) != nil || json.Unmarshal(e.Data, &d) != nil {
		return
	}
	if e.Type == "snapshot" {
		b.seen, b.bids, b.asks = true, map[string]string{}, map[string]string{}
	}
	if !b.seen {
		return
	}
	apply := func(side map[string]string, levels [][2]string) {
		for _, l := range levels {
			if q, err := strconv.ParseFloat(l[1], 64); err == nil && q == 0 {
				delete(side, l[0])
			} else {
				side[l[0]] = l[1]
			}
		}
	}
	apply(b.bids, d.Bids)
	apply(b.asks, d.Asks)
	b.last, b.data.Symbol, b.data.U, b.data.Seq = e, d.Symbol, d.U, d.Seq
}

func (b *bybitBook) Catchup() []event {
	if !b.seen {
		return nil
	}
	side := func(m map[string]string, desc bool) [][2]string {
		out := make([][2]string, 0, len(m))
		for p, q := range m {
			out = append(out, [2]string{p, q})
		}
		slices.SortFunc(out, func(x, y [2]string) int {
			px, _ := strconv.ParseFloat(x[0], 64)
			py, _ := strconv.ParseFloat(y[0], 64)
			if desc {
				px, py = py, px
			}
			switch {
			case px < py:
				return -1
			case px > py:
				return 1
			}
			return 0
		})
		return out
	}
	d := b.data
	d.Bids, d.Asks = side(b.bids, true), side(b.asks, false)
	data, _ := json.Marshal(d)
	e := b.last
	e.Topic, e.Type, e.Data = b.topic, "snapshot", data
	msg, _ := json.Marshal(e)
	return []event{{raw: msg, combined: msg}}
}

// bybitTicker is a ticker as its snapshot and deltas make it.
type bybitTicker struct {
	topic  string
	last   bybitEvent
	fields map[string]json.RawMessage
}

func (t *bybitTicker) Add(ev event) {
	var e bybitEvent
	var fields map[string]json.RawMessage
	if json.Unmarshal(ev.raw, &e) != nil || json.Unmarshal(e.Data, &fields) != nil {
		return
	}
	if e.Type == "snapshot" || t.fields == nil {
		t.fields = map[string]json.RawMessage{}
	}
	for k, v := range fields {
		t.fields[k] = v
	}
	t.last = e
}

func (t *bybitTicker) Catchup() []event {
	if t.fields == nil {
		return nil
	}
	data, _ := json.Marshal(t.fields)
	e := t.last
	e.Topic, e.Type, e.Data = t.topic, "snapshot", data
	msg, _ := json.Marshal(e)
	return []event{{raw: msg, combined: msg}}
}

// Order: a book's update id (a snapshot covers everything before it; one
// at u=1 is a reset, sent when Bybit's service restarted), else the
// event's time.
func (bybit) Order(raw []byte) (order, bool) {
	var e struct {
		Type string `json:"type"`
		TS   int64  `json:"ts"`
		Data struct {
			U *int64 `json:"u"`
		} `json:"data"`
	}
	// data is an object for books and tickers, a list for trades and
	// candles: read u where there is one.
	if json.Unmarshal(raw, &e) != nil {
		var t struct {
			TS int64 `json:"ts"`
		}
		if json.Unmarshal(raw, &t) != nil || t.TS == 0 {
			return order{}, false
		}
		return order{first: t.TS, last: t.TS}, true
	}
	switch u := e.Data.U; {
	case u != nil && e.Type == "snapshot":
		return order{first: 0, last: *u, seq: true, reset: *u == 1}, true
	case u != nil:
		return order{first: *u, last: *u, seq: true}, true
	}
	return order{first: e.TS, last: e.TS}, e.TS > 0
}
