package streams

import "testing"

// TestEventPrice reads the price of the events that carry one, as the
// exchanges document them, and nothing from the others.
func TestEventPrice(t *testing.T) {
	for _, tc := range []struct {
		protocol, stream, raw string
		symbol                string
		price                 float64
	}{
		{"binance", "btcusdt@ticker", `{"e":"24hrTicker","E":1,"s":"BTCUSDT","p":"-5","c":"20000.5","o":"20005"}`, "BTCUSDT", 20000.5},
		{"binance", "ethusdt@bookTicker", `{"u":1,"s":"ETHUSDT","b":"1999","B":"1","a":"2001","A":"1"}`, "ETHUSDT", 2000},
		{"binance", "btcusdt@trade", `{"e":"trade","s":"BTCUSDT","t":1,"p":"19999","q":"0.1"}`, "BTCUSDT", 19999},
		{"binance", "btcusdt@markPrice@1s", `{"e":"markPriceUpdate","s":"BTCUSDT","p":"20001"}`, "BTCUSDT", 20001},
		{"binance", "btcusdt@depth@100ms", `{"e":"depthUpdate","s":"BTCUSDT","b":[["1","1"]]}`, "", 0},
		{"binance", "btcusdt@kline_1m", `{"e":"kline","s":"BTCUSDT","k":{"c":"1"}}`, "", 0},
		{"bybit", "tickers.SOLUSDT", `{"topic":"tickers.SOLUSDT","type":"snapshot","data":{"symbol":"SOLUSDT","lastPrice":"150.5"}}`, "SOLUSDT", 150.5},
		{"bybit", "tickers.SOLUSDT", `{"topic":"tickers.SOLUSDT","type":"delta","data":{"symbol":"SOLUSDT","volume24h":"1"}}`, "", 0},
		{"bybit", "publicTrade.BTCUSDT", `{"topic":"publicTrade.BTCUSDT","data":[{"s":"BTCUSDT","p":"1"},{"s":"BTCUSDT","p":"2"}]}`, "BTCUSDT", 2},
	} {
		sym, p, ok := eventPrice(tc.protocol, tc.stream, []byte(tc.raw))
		if ok != (tc.symbol != "") || ok && (sym != tc.symbol || p != tc.price) {
			t.Errorf("%s %s: %q %v %v, want %q %v", tc.protocol, tc.stream, sym, p, ok, tc.symbol, tc.price)
		}
	}
}
