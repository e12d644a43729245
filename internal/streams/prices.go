package streams

import (
	"encoding/json"
	"strconv"
	"strings"
)

// eventPrice reads a price from an event of a stream that carries one
// (Binance: ticker, miniTicker, bookTicker, trade, aggTrade, markPrice;
// Bybit: tickers, publicTrade), for valuing orders; ok is false for any
// other stream, and for an event without a price (a Bybit delta that
// left it out).
func eventPrice(protocol, stream string, raw []byte) (symbol string, price float64, ok bool) {
	num := func(s string) float64 { f, _ := strconv.ParseFloat(s, 64); return f }
	switch protocol {
	case "binance":
		_, kind, found := strings.Cut(stream, "@")
		if !found {
			return "", 0, false
		}
		kind, _, _ = strings.Cut(kind, "@") // markPrice@1s
		// The upper-case keys are other fields (close time, change
		// percent, quantities): named here so that encoding/json, which
		// matches keys ignoring case, does not take them for these.
		var e struct {
			S string `json:"s"`
			C string `json:"c"` // ticker, miniTicker: last price
			P string `json:"p"` // trade, aggTrade, markPrice (a ticker's is its change)
			B string `json:"b"` // bookTicker
			A string `json:"a"`

			UC json.RawMessage `json:"C"`
			UP json.RawMessage `json:"P"`
			UB json.RawMessage `json:"B"`
			UA json.RawMessage `json:"A"`
		}
		switch kind {
		case "ticker", "miniTicker", "bookTicker", "trade", "aggTrade", "markPrice":
		default:
			return "", 0, false
		}
		if json.Unmarshal(raw, &e) != nil {
			return "", 0, false
		}
		var v float64
		switch kind {
		case "ticker", "miniTicker":
			v = num(e.C)
		case "bookTicker":
			v = (num(e.B) + num(e.A)) / 2
		default:
			v = num(e.P)
		}
		return e.S, v, e.S != "" && v > 0
	case "bybit":
		switch {
		case strings.HasPrefix(stream, "tickers."):
			var e struct {
				Data struct {
					Symbol    string `json:"symbol"`
					LastPrice string `json:"lastPrice"`
				} `json:"data"`
			}
			if json.Unmarshal(raw, &e) != nil {
				return "", 0, false
			}
			v := num(e.Data.LastPrice)
			return e.Data.Symbol, v, e.Data.Symbol != "" && v > 0
		case strings.HasPrefix(stream, "publicTrade."):
			var e struct {
				Data []struct {
					S string `json:"s"`
					P string `json:"p"`
				} `json:"data"`
			}
			if json.Unmarshal(raw, &e) != nil || len(e.Data) == 0 {
				return "", 0, false
			}
			last := e.Data[len(e.Data)-1]
			v := num(last.P)
			return last.S, v, last.S != "" && v > 0
		}
	}
	return "", 0, false
}
