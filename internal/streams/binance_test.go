package streams

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"testing"
)

// TestBinanceClientMessages: each message a Binance client may send gets
// the exchange's own answer, with the id exactly as the client wrote it.
func TestBinanceClientMessages(t *testing.T) {
	b := binance{}
	for _, tc := range []struct {
		msg, answer string
		op          op
		names       []string
	}{
		{msg: `{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@depth@100ms"],"id":1}`, op: opSubscribe, names: []string{"btcusdt@trade", "btcusdt@depth@100ms"}, answer: `{"result":null,"id":1}`},
		{msg: `{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":"unsub-7"}`, op: opUnsubscribe, names: []string{"btcusdt@trade"}, answer: `{"result":null,"id":"unsub-7"}`},
		{msg: `{"method":"SUBSCRIBE","params":["!miniTicker@arr"]}`, op: opSubscribe, names: []string{"!miniTicker@arr"}, answer: `{"result":null,"id":null}`},
		{msg: `{"method":"SET_PROPERTY","params":["combined",true],"id":5}`, op: opSetCombined, answer: `{"result":null,"id":5}`},
		{msg: `{"method":"SET_PROPERTY","params":["combined","yes"],"id":5}`, answer: `{"code":1,"msg":"Invalid value type: expected Boolean"}`},
		{msg: `{"method":"GET_PROPERTY","params":["combined"],"id":2}`, op: opGetCombined},
		{msg: `{"method":"GET_PROPERTY","params":["other"],"id":2}`, answer: `{"code":0,"msg":"Unknown property","id":2}`},
		{msg: `{"method":"LIST","id":3}`, answer: "{\"code\":2,\"msg\":\"Invalid request: unknown variant `LIST`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`\",\"id\":3}"},
		{msg: `{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":-1}`, answer: `{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"}`},
		{msg: `{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":"has space"}`, answer: `{"code":2,"msg":"Invalid request: request ID must be an unsigned integer"}`},
		{msg: `not json`, answer: `{"code":3,"msg":"Invalid JSON: invalid character 'o' in literal null (expecting 'u')"}`},
		{msg: `{"method":"SUBSCRIBE","params":[42],"id":4}`, answer: `{"code":2,"msg":"Invalid request: stream names must be strings","id":4}`},
	} {
		rq := b.Parse([]byte(tc.msg))
		if tc.answer != "" && rq.op == opNone {
			if string(rq.answer) != tc.answer {
				t.Errorf("%s: answered %s, want %s", tc.msg, rq.answer, tc.answer)
			}
			continue
		}
		if rq.answer != nil || rq.op != tc.op || !slices.Equal(rq.names, tc.names) {
			t.Errorf("%s: op %v names %v answer %s; want op %v names %v", tc.msg, rq.op, rq.names, rq.answer, tc.op, tc.names)
			continue
		}
		if tc.answer != "" {
			if got := string(b.Answer(rq, "null")); got != tc.answer {
				t.Errorf("%s: answered %s, want %s", tc.msg, got, tc.answer)
			}
		}
	}
}

// TestBinanceSessionPaths: which upgrades are shared, with which streams
// and framing; a listen key is the client's own.
func TestBinanceSessionPaths(t *testing.T) {
	for _, tc := range []struct {
		target   string
		ok       bool
		initial  []string
		combined bool
	}{
		{"/ws", true, nil, false},
		{"/ws/btcusdt@trade/ethusdt@kline_1m", true, []string{"btcusdt@trade", "ethusdt@kline_1m"}, false},
		{"/ws/0", true, nil, false},
		{"/stream?streams=btcusdt@trade/btcusdt@depth@100ms", true, []string{"btcusdt@trade", "btcusdt@depth@100ms"}, true},
		{"/public/ws/btcusdt@bookTicker", true, []string{"btcusdt@bookTicker"}, false},
		{"/ws/pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1", false, nil, false},
		{"/stream?streams=pqia91ma19a5s61cv6a81va65sdf19v8a65a1", false, nil, false},
		{"/ws-api/v3", false, nil, false},
	} {
		_, initial, combined, ok := binance{}.Session(httptest.NewRequest("GET", "https://stream.binance.com:9443"+tc.target, nil))
		if ok != tc.ok || !slices.Equal(initial, tc.initial) || combined != tc.combined {
			t.Errorf("%s: shared %v, streams %v, combined %v; want %v, %v, %v", tc.target, ok, initial, combined, tc.ok, tc.initial, tc.combined)
		}
	}
}

// TestBybitClientMessages: Bybit's subscribe, unsubscribe and ping, each
// answered with the client's req_id and op; a ping never goes upstream.
func TestBybitClientMessages(t *testing.T) {
	b := bybit{}
	for _, tc := range []struct {
		msg, answer string
		op          op
		names       []string
	}{
		{msg: `{"req_id":"a1","op":"subscribe","args":["orderbook.50.BTCUSDT","publicTrade.BTCUSDT"]}`, op: opSubscribe,
			names: []string{"orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"}, answer: `{"success":true,"ret_msg":"","conn_id":"sluice","req_id":"a1","op":"subscribe"}`},
		{msg: `{"op":"unsubscribe","args":["tickers.ETHUSDT"]}`, op: opUnsubscribe, names: []string{"tickers.ETHUSDT"},
			answer: `{"success":true,"ret_msg":"","conn_id":"sluice","op":"unsubscribe"}`},
		{msg: `{"req_id":"p1","op":"ping"}`, answer: `{"success":true,"ret_msg":"pong","conn_id":"sluice","req_id":"p1","op":"ping"}`},
		{msg: `{"req_id":"x","op":"subscribe","args":["no spaces allowed"]}`, answer: `{"success":false,"ret_msg":"error:invalid topic \"no spaces allowed\"","conn_id":"sluice","req_id":"x","op":"subscribe"}`},
		{msg: `{"op":"auth","args":["key"]}`, answer: `{"success":false,"ret_msg":"error:handler not found","conn_id":"sluice","op":"auth"}`},
	} {
		rq := b.Parse([]byte(tc.msg))
		got := rq.answer
		if rq.op != opNone {
			got = b.Answer(rq, "")
		}
		if rq.op != tc.op || !slices.Equal(rq.names, tc.names) || string(got) != tc.answer {
			t.Errorf("%s: op %v names %v answer %s; want op %v names %v answer %s", tc.msg, rq.op, rq.names, got, tc.op, tc.names, tc.answer)
		}
	}
}

// TestSplitCombined: an event in Binance's combined frame is split
// without decoding its payload; anything else is left to the decoder,
// and reads the same through it.
func TestSplitCombined(t *testing.T) {
	p := binance{}
	for _, msg := range []string{
		`{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","U":1,"u":2,"b":[["1","2"]],"a":[]}}`,
		`{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":5}}` + "\n",
		`{"data":{"e":"trade"},"stream":"btcusdt@trade"}`,
		`{"stream":"btcusdt@trade", "data": {"e":"trade"}}`,
	} {
		got := p.Upstream([]byte(msg))
		var m upstreamMessage
		if err := json.Unmarshal([]byte(msg), &m); err != nil {
			t.Fatal(err)
		}
		if got.kind != upstreamEvent || got.stream != m.Stream || !bytes.Equal(bytes.TrimSpace(got.ev.raw), bytes.TrimSpace(m.Data)) {
			t.Errorf("%s: %+v, want the event of %s with data %s", msg, got, m.Stream, m.Data)
		}
	}
	for _, msg := range []string{`{"result":null,"id":3}`, `{"stream":"x","data":{"e":"serverShutdown","E":1}}`, `{"stream":"","data":{}}`} {
		got := p.Upstream([]byte(msg))
		if got.kind == upstreamEvent && got.stream == "" {
			t.Errorf("%s read as an event of no stream", msg)
		}
	}
	if got := p.Upstream([]byte(`{"stream":"x","data":{"e":"serverShutdown","E":1}}`)); got.kind != upstreamShutdown {
		t.Errorf("serverShutdown: %+v", got)
	}
}
