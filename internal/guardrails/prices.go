package guardrails

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Prices are the latest prices sluice saw in exchanges' ticker answers,
// by exchange and symbol: what a market order without a price is valued
// at.
type Prices struct {
	wanted atomic.Bool
	mu     sync.Mutex
	prices map[string]price // "exchange symbol"
}

// Want says whether prices are needed (a notional limit is configured);
// while they are not, tickers and streams are not read for them.
func (p *Prices) Want(on bool) { p.wanted.Store(on) }

// Wanted reports what Want last said.
func (p *Prices) Wanted() bool { return p.wanted.Load() }

type price struct {
	value float64
	at    time.Time
}

// priceMaxAge is how old a price may be to value an order.
const priceMaxAge = 10 * time.Minute

// NewPrices returns an empty book.
func NewPrices() *Prices { return &Prices{prices: map[string]price{}} }

// Price is the latest price of symbol on exchange, if one is recent.
func (p *Prices) Price(exchange, symbol string, now time.Time) (float64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr, ok := p.prices[exchange+" "+strings.ToUpper(symbol)]
	if !ok || now.Sub(pr.at) > priceMaxAge {
		return 0, false
	}
	return pr.value, true
}

// Set records symbol's price on exchange, seen at at.
func (p *Prices) Set(exchange, symbol string, v float64, at time.Time) {
	if symbol == "" || v <= 0 {
		return
	}
	p.mu.Lock()
	p.prices[exchange+" "+strings.ToUpper(symbol)] = price{v, at}
	p.mu.Unlock()
}

// tickerPath reports whether a GET of path on exchange answers prices
// that observe reads.
func tickerPath(exchange, path string) bool {
	switch exchange {
	case "binance":
		return path == "/api/v3/ticker/price" || path == "/api/v3/ticker/bookTicker" || path == "/api/v3/ticker/24hr" || path == "/api/v3/ticker" ||
			path == "/fapi/v1/ticker/price" || path == "/fapi/v1/ticker/24hr" || path == "/fapi/v1/premiumIndex"
	case "bybit":
		return path == "/v5/market/tickers"
	case "kraken":
		return path == "/0/public/Ticker"
	}
	return false
}

// observe reads the prices of a ticker answer: Binance's one object or
// list ({"symbol","price"|"lastPrice"|"markPrice"|"bidPrice"/"askPrice"}),
// Bybit's result.list ({"symbol","lastPrice"}), Kraken's result by pair
// ({"c": [last, volume]}).
func (p *Prices) observe(exchange string, body []byte, at time.Time) {
	type quote struct {
		Symbol    string `json:"symbol"`
		Price     string `json:"price"`
		LastPrice string `json:"lastPrice"`
		MarkPrice string `json:"markPrice"`
		BidPrice  string `json:"bidPrice"`
		AskPrice  string `json:"askPrice"`
	}
	value := func(q quote) float64 {
		for _, s := range []string{q.Price, q.LastPrice, q.MarkPrice} {
			if v := num(s); v > 0 {
				return v
			}
		}
		if b, a := num(q.BidPrice), num(q.AskPrice); b > 0 && a > 0 {
			return (b + a) / 2
		}
		return 0
	}
	switch exchange {
	case "binance":
		var list []quote
		if bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
			json.Unmarshal(body, &list)
		} else {
			var one quote
			if json.Unmarshal(body, &one) == nil {
				list = []quote{one}
			}
		}
		for _, q := range list {
			p.Set(exchange, q.Symbol, value(q), at)
		}
	case "bybit":
		var r struct {
			Result struct {
				List []quote `json:"list"`
			} `json:"result"`
		}
		json.Unmarshal(body, &r)
		for _, q := range r.Result.List {
			p.Set(exchange, q.Symbol, value(q), at)
		}
	case "kraken":
		var r struct {
			Result map[string]struct {
				C []string `json:"c"`
			} `json:"result"`
		}
		json.Unmarshal(body, &r)
		for pair, t := range r.Result {
			if len(t.C) > 0 {
				p.Set(exchange, pair, num(t.C[0]), at)
			}
		}
	}
}

// maxTickerBody bounds what is kept of a ticker answer to read its prices
// (every Binance ticker at once is about 2 MB).
const maxTickerBody = 8 << 20

// watch passes a ticker answer to the client and keeps a copy to read.
type watch struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (w *watch) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *watch) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.body.Len()+len(b) <= maxTickerBody {
		w.body.Write(b)
	}
	return w.ResponseWriter.Write(b)
}

func (w *watch) Unwrap() http.ResponseWriter { return w.ResponseWriter }
