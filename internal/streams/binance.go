package streams

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// binance is the market-stream protocol of Binance spot, USD-M and COIN-M
// futures (web-socket-streams.md of binance-spot-api-docs, and the
// futures "Live Subscribing/Unsubscribing to streams" pages): raw streams
// at /ws/<stream>[/<stream>...], combined ones at /stream?streams=a/b,
// SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY and
// GET_PROPERTY with ids. sluice's own upstream connections are combined,
// so that every event names its stream.
type binance struct{}

func (binance) Batch() int   { return maxBatch }
func (binance) Ping() []byte { return nil }
func (binance) Name() string { return "binance" }

// binanceStream is a public market stream name: a lower-case symbol (or a
// "!" market-wide name) and its kind. Listen keys, which name private user
// data streams, have no "@" and are never shared.
var binanceStream = regexp.MustCompile(`^(![a-zA-Z]+|[a-z0-9_\-.]{1,48})@[a-zA-Z0-9_@]{1,48}$|^![a-zA-Z]+$`)

// binanceConnID is what ccxt puts in a /ws/ path to tell its connections
// apart (/ws/0, /ws/1, ...): not a stream; Binance ignores it.
var binanceConnID = regexp.MustCompile(`^[0-9]{1,4}$`)

// Session: the path prefix selects the market (futures' /public,
// /market); a listen key (user data) is never shared.
func (binance) Session(r *http.Request) (ns string, initial []string, combined, ok bool) {
	p := r.URL.Path
	prefix := ""
	for _, pre := range []string{"/public", "/market"} {
		if strings.HasPrefix(p, pre+"/") {
			prefix, p = pre, p[len(pre):]
			break
		}
	}
	switch {
	case p == "/ws" || p == "/ws/":
		return prefix, nil, false, true
	case strings.HasPrefix(p, "/ws/"):
		for name := range strings.SplitSeq(p[len("/ws/"):], "/") {
			switch {
			case name == "" || binanceConnID.MatchString(name):
			case binanceStream.MatchString(name):
				initial = append(initial, name)
			default:
				return "", nil, false, false // a listen key: the client's own stream
			}
		}
		return prefix, initial, false, true
	case p == "/stream" || p == "/stream/":
		if s := r.URL.Query().Get("streams"); s != "" {
			for name := range strings.SplitSeq(s, "/") {
				if name == "" {
					continue
				}
				if !binanceStream.MatchString(name) {
					return "", nil, false, false
				}
				initial = append(initial, name)
			}
		}
		return prefix, initial, true, true
	}
	return "", nil, false, false
}

func (binance) UpstreamPath(ns string) string { return ns + "/stream" }

// clientRequest is one message a client sent, as the exchange reads it.
type clientRequest struct {
	Method string            `json:"method"`
	Params []json.RawMessage `json:"params"`
	ID     json.RawMessage   `json:"id"`
}

// request is a client's message, parsed.
type request struct {
	op     op
	verb   string // the method or op as the client wrote it (Bybit echoes it)
	id     []byte // as the client wrote it, echoed in the answer
	names  []string
	value  bool   // SET_PROPERTY combined
	answer []byte // set when the message is answered with an error at once
}

type op int

const (
	opNone op = iota
	opSubscribe
	opUnsubscribe
	opList
	opSetCombined
	opGetCombined
)

// Parse answers an invalid message with the exchange's own error.
func (binance) Parse(msg []byte) request {
	var cr clientRequest
	if err := json.Unmarshal(msg, &cr); err != nil {
		return request{answer: fmt.Appendf(nil, `{"code":3,"msg":%s}`, jsonText("Invalid JSON: "+err.Error()))}
	}
	id := bytes.TrimSpace(cr.ID)
	if !validID(id) {
		return request{answer: []byte(`{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"}`)}
	}
	rq := request{id: id}
	fail := func(code int, msg string) request {
		return request{id: id, answer: fmt.Appendf(nil, `{"code":%d,"msg":%s,"id":%s}`, code, jsonText(msg), idOrNull(id))}
	}
	switch cr.Method {
	case "SUBSCRIBE", "UNSUBSCRIBE":
		rq.op = opSubscribe
		if cr.Method == "UNSUBSCRIBE" {
			rq.op = opUnsubscribe
		}
		for _, p := range cr.Params {
			var name string
			if err := json.Unmarshal(p, &name); err != nil {
				return fail(2, "Invalid request: stream names must be strings")
			}
			if !binanceStream.MatchString(name) {
				// Private streams (listen keys) are the client's own:
				// they need a connection of their own at /ws/<listenKey>.
				return fail(2, fmt.Sprintf("Invalid request: %q is not a public market stream (sluice shares those; open /ws/<listenKey> for a user data stream)", name))
			}
			rq.names = append(rq.names, name)
		}
	case "LIST_SUBSCRIPTIONS":
		rq.op = opList
	case "SET_PROPERTY", "GET_PROPERTY":
		var prop string
		if len(cr.Params) == 0 || json.Unmarshal(cr.Params[0], &prop) != nil {
			return fail(2, "Invalid request: property name must be a string")
		}
		if prop != "combined" {
			return fail(0, "Unknown property")
		}
		if cr.Method == "GET_PROPERTY" {
			rq.op = opGetCombined
			return rq
		}
		if len(cr.Params) < 2 || json.Unmarshal(cr.Params[1], &rq.value) != nil {
			rq.answer = []byte(`{"code":1,"msg":"Invalid value type: expected Boolean"}`)
			return rq
		}
		rq.op = opSetCombined
	case "":
		return fail(2, "Invalid request: missing field `method`")
	default:
		return fail(2, fmt.Sprintf("Invalid request: unknown variant `%s`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`", cr.Method))
	}
	return rq
}

var binanceStringID = regexp.MustCompile(`^[a-zA-Z0-9\-_]*$`)

// validID is an id Binance accepts: an unsigned integer, a string of up
// to 36 letters and digits, or null.
func validID(id []byte) bool {
	if len(id) == 0 || string(id) == "null" {
		return true
	}
	if id[0] == '"' {
		var s string
		return json.Unmarshal(id, &s) == nil && len(s) <= 36 && binanceStringID.MatchString(s)
	}
	_, err := strconv.ParseUint(string(id), 10, 64)
	return err == nil
}

func (binance) Answer(rq request, result string) []byte {
	if rq.op == opList {
		list, _ := json.Marshal(rq.names)
		if rq.names == nil {
			list = []byte("[]")
		}
		result = string(list)
	}
	return fmt.Appendf(nil, `{"result":%s,"id":%s}`, result, idOrNull(rq.id))
}

func (binance) Refuse(rq request, msg string) []byte {
	return fmt.Appendf(nil, `{"code":2,"msg":%s,"id":%s}`, jsonText("Invalid request: "+msg), idOrNull(rq.id))
}

// State: a client joining a diff-depth stream late gets the last
// spec.replay of its events first.
func (b binance) State(stream string, spec *Spec) streamState {
	if !b.Diffs(stream) || spec.replay <= 0 {
		return nil
	}
	return &replay{keep: spec.replay}
}

func (binance) Subscribe(names []string, unsubscribe bool, id int64) []byte {
	method := "SUBSCRIBE"
	if unsubscribe {
		method = "UNSUBSCRIBE"
	}
	params, _ := json.Marshal(names)
	return fmt.Appendf(nil, `{"method":%q,"params":%s,"id":%d}`, method, params, id)
}

// upstreamMessage is what an upstream connection sends: a combined event,
// an answer to sluice's request, or a notice.
type upstreamMessage struct {
	Stream string          `json:"stream"`
	Data   json.RawMessage `json:"data"`
	Result json.RawMessage `json:"result"`
	ID     json.RawMessage `json:"id"`
	Code   *int            `json:"code"`
	Msg    string          `json:"msg"`
	Event  string          `json:"e"`
	// Declared so that "E" (a number) is not read into "e": encoding/json
	// matches keys without regard to case.
	Time json.RawMessage `json:"E"`
}

// event is one upstream message of one stream: the bytes a raw client
// gets and the bytes a combined one gets.
type event struct {
	raw, combined []byte
	// at is when sluice read the event from the exchange; zero for what
	// is not live (a replay, a built snapshot), which the delivery delay
	// does not count.
	at time.Time
}

// splitCombined reads an event as Binance frames every event of a
// combined stream, {"stream":"<name>","data":<payload>}, without decoding
// the payload (a depth diff is kilobytes that sluice passes on as they
// came); ok is false for anything else, which is decoded whole.
func splitCombined(msg []byte) (stream string, data []byte, ok bool) {
	rest, found := bytes.CutPrefix(msg, []byte(`{"stream":"`))
	if !found {
		return "", nil, false
	}
	name, rest, found := bytes.Cut(rest, []byte(`"`))
	if !found || len(name) == 0 || bytes.IndexByte(name, '\\') >= 0 {
		return "", nil, false
	}
	rest, found = bytes.CutPrefix(rest, []byte(`,"data":`))
	if !found {
		return "", nil, false
	}
	rest = bytes.TrimRight(rest, " \t\r\n")
	if len(rest) < 3 || rest[len(rest)-1] != '}' {
		return "", nil, false
	}
	data = bytes.TrimRight(rest[:len(rest)-1], " \t\r\n")
	if len(data) < 2 || data[0] != '{' || data[len(data)-1] != '}' {
		return "", nil, false
	}
	return string(name), data, true
}

func (binance) Upstream(msg []byte) upstreamMsg {
	if stream, data, ok := splitCombined(msg); ok {
		if bytes.Contains(data[:min(len(data), 64)], []byte(`"serverShutdown"`)) {
			return upstreamMsg{kind: upstreamShutdown, detail: "serverShutdown"}
		}
		return upstreamMsg{kind: upstreamEvent, stream: stream, ev: event{raw: data, combined: msg}}
	}
	var m upstreamMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		return upstreamMsg{detail: err.Error()}
	}
	id, _ := strconv.ParseInt(string(m.ID), 10, 64)
	switch {
	case m.Stream != "" && len(m.Data) > 0:
		if bytes.Contains(m.Data[:min(len(m.Data), 64)], []byte(`"serverShutdown"`)) {
			return upstreamMsg{kind: upstreamShutdown, detail: "serverShutdown"}
		}
		return upstreamMsg{kind: upstreamEvent, stream: m.Stream, ev: event{raw: m.Data, combined: msg}}
	case m.Event == "serverShutdown":
		return upstreamMsg{kind: upstreamShutdown, detail: "serverShutdown"}
	case m.Code != nil:
		return upstreamMsg{kind: upstreamError, id: id, detail: fmt.Sprintf("code %d: %s", *m.Code, m.Msg)}
	case len(m.ID) > 0:
		return upstreamMsg{kind: upstreamAnswer, id: id}
	}
	return upstreamMsg{detail: "a message sluice does not know"}
}

// upstreamMsg is an upstream message, read.
type upstreamMsg struct {
	kind   upstreamKind
	stream string // of an event
	ev     event
	id     int64 // of an answer to sluice's request
	detail string
}

type upstreamKind int

const (
	upstreamUnknown upstreamKind = iota
	upstreamEvent
	upstreamAnswer
	upstreamError
	upstreamShutdown
)

// Diffs says whether a stream's events are changes to an order book, so
// that a client joining late needs the recent ones replayed: the diff
// depth streams, not the partial books (@depth5, @depth10, @depth20).
func (binance) Diffs(stream string) bool {
	_, kind, ok := strings.Cut(stream, "@")
	return ok && (kind == "depth" || strings.HasPrefix(kind, "depth@"))
}

// order is where an event stands in its stream, so that two upstream
// connections carrying the same stream (a rollover) can be merged
// without a gap or a duplicate: first and last update ids of a depth
// diff, a trade's id, or an event time. seq says the numbers are
// consecutive (the next event's first is last+1).
type order struct {
	first, last int64
	seq         bool
	reset       bool // the stream starts again here (its ids from 1)
}

func (binance) Order(raw []byte) (order, bool) {
	// encoding/json matches keys without regard to case, so each pair
	// (e/E, u/U, t/T, a/A) is declared whole: an exact match wins.
	var f struct {
		Event     string `json:"e"`
		Time      int64  `json:"E"`
		First     int64  `json:"U"`
		Last      int64  `json:"u"`
		Trade     int64  `json:"t"`
		TradeTime int64  `json:"T"`
		// "a" is an aggregate trade's id but a depth diff's asks: read
		// only when the event is an aggTrade.
		Agg      json.RawMessage `json:"a"`
		AskQty   json.RawMessage `json:"A"`
		LastBook int64           `json:"lastUpdateId"`
	}
	if len(raw) > 0 && raw[0] == '[' { // market-wide arrays: the newest event time
		var arr []struct {
			Event string `json:"e"`
			Time  int64  `json:"E"`
		}
		if json.Unmarshal(raw, &arr) != nil || len(arr) == 0 {
			return order{}, false
		}
		var t int64
		for _, e := range arr {
			t = max(t, e.Time)
		}
		return order{first: t, last: t}, t > 0
	}
	if json.Unmarshal(raw, &f) != nil {
		return order{}, false
	}
	switch f.Event {
	case "depthUpdate":
		return order{first: f.First, last: f.Last, seq: true}, true
	case "trade":
		return order{first: f.Trade, last: f.Trade, seq: true}, true
	case "aggTrade":
		a, err := strconv.ParseInt(string(f.Agg), 10, 64)
		return order{first: a, last: a, seq: true}, err == nil
	case "":
		switch {
		case f.LastBook > 0: // a partial book
			return order{first: f.LastBook, last: f.LastBook}, true
		case f.Last > 0: // a bookTicker
			return order{first: f.Last, last: f.Last}, true
		}
		return order{}, false
	}
	return order{first: f.Time, last: f.Time}, f.Time > 0
}

// jsonText is s as a JSON string.
func jsonText(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
