package guardrails

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Kind is what a trading request does.
type Kind uint8

const (
	// Other is not a trading request: the guardrails let it pass.
	Other Kind = iota
	// Place places one or more orders.
	Place
	// Cancel cancels orders.
	Cancel
	// Leverage changes leverage (or margin mode).
	Leverage
)

// Order is one order of a trading request, as the guardrails read it.
type Order struct {
	Symbol string
	// Notional is price times quantity (or the quote quantity) in the
	// symbol's quote currency; 0 when the order does not say.
	Notional float64
	// Quantity is the base quantity of an order without a price (a
	// market order), for valuing it at the latest price sluice saw.
	Quantity float64
}

// Request is what a trading request asks for.
type Request struct {
	Kind   Kind
	Orders []Order // for Place: each order (a batch has several)
	Symbol string  // for Cancel and Leverage
	// Leverage marks an order that also sets leverage (Kraken's leverage).
	Leverage bool
}

// Parse reads a request to exchange (binance, bybit, kraken) as the
// exchange documents its order endpoints: Binance spot /api/v3/order,
// /api/v3/order/oco, /api/v3/orderList/*, /api/v3/sor/order and USD-M
// futures /fapi/v1/order and /fapi/v1/batchOrders (leverage:
// /fapi/v1/leverage, /fapi/v1/marginType); Bybit v5 /v5/order/create,
// /v5/order/create-batch, cancels, /v5/position/set-leverage; Kraken
// /0/private/AddOrder, AddOrderBatch, CancelOrder, CancelAll. body is the
// whole request body; params come from the query and a form body.
func Parse(exchange, method, path string, query url.Values, body []byte) Request {
	switch exchange {
	case "binance":
		return parseBinance(method, path, query, body)
	case "bybit":
		return parseBybit(method, path, body)
	case "kraken":
		return parseKraken(method, path, body)
	}
	return Request{}
}

// params merges the query and a form body, as Binance reads them.
func params(query url.Values, body []byte) url.Values {
	out := url.Values{}
	for k, v := range query {
		out[k] = append(out[k], v...)
	}
	if form, err := url.ParseQuery(string(body)); err == nil {
		for k, v := range form {
			out[k] = append(out[k], v...)
		}
	}
	return out
}

func num(s string) float64 {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 {
		return 0
	}
	return f
}

// notional values an order from its price and quantity, or its quote
// quantity; 0 when neither is given.
func notional(price, qty, quoteQty string) float64 {
	if q := num(quoteQty); q > 0 {
		return q
	}
	return num(price) * num(qty)
}

// unpriced keeps the quantity of an order whose value its request does
// not give.
func unpriced(sym string, value float64, qty string) Order {
	if value > 0 {
		return Order{Symbol: sym, Notional: value}
	}
	return Order{Symbol: sym, Quantity: num(qty)}
}

func parseBinance(method, path string, query url.Values, body []byte) Request {
	p := params(query, body)
	sym := strings.ToUpper(p.Get("symbol"))
	switch {
	case method == http.MethodPost && (path == "/api/v3/order" || path == "/api/v3/sor/order" || path == "/fapi/v1/order" || path == "/dapi/v1/order"):
		return Request{Kind: Place, Orders: []Order{unpriced(sym, notional(p.Get("price"), p.Get("quantity"), p.Get("quoteOrderQty")), p.Get("quantity"))}}
	case method == http.MethodPost && (path == "/api/v3/order/oco" || strings.HasPrefix(path, "/api/v3/orderList/")):
		// Two or three legs on one quantity: the largest leg's price values it.
		price := max(num(p.Get("price")), num(p.Get("abovePrice")), num(p.Get("belowPrice")), num(p.Get("workingPrice")))
		return Request{Kind: Place, Orders: []Order{{Symbol: sym, Notional: price * num(p.Get("quantity"))}}}
	case method == http.MethodPost && (path == "/fapi/v1/batchOrders" || path == "/dapi/v1/batchOrders"):
		var batch []map[string]string
		if json.Unmarshal([]byte(p.Get("batchOrders")), &batch) != nil || len(batch) == 0 {
			return Request{Kind: Place, Orders: []Order{{}}} // unreadable: counted, not valued
		}
		r := Request{Kind: Place}
		for _, o := range batch {
			r.Orders = append(r.Orders, unpriced(strings.ToUpper(o["symbol"]), notional(o["price"], o["quantity"], ""), o["quantity"]))
		}
		return r
	case method == http.MethodDelete && (path == "/api/v3/order" || path == "/api/v3/openOrders" || path == "/api/v3/orderList" ||
		path == "/fapi/v1/order" || path == "/fapi/v1/allOpenOrders" || path == "/fapi/v1/batchOrders" || path == "/dapi/v1/order"):
		return Request{Kind: Cancel, Symbol: sym}
	case method == http.MethodPost && (path == "/api/v3/order/cancelReplace"):
		return Request{Kind: Place, Orders: []Order{unpriced(sym, notional(p.Get("price"), p.Get("quantity"), p.Get("quoteOrderQty")), p.Get("quantity"))}}
	case method == http.MethodPost && (path == "/fapi/v1/leverage" || path == "/fapi/v1/marginType" || path == "/dapi/v1/leverage"):
		return Request{Kind: Leverage, Symbol: sym}
	}
	return Request{}
}

func parseBybit(method, path string, body []byte) Request {
	if method != http.MethodPost {
		return Request{}
	}
	var one struct {
		Symbol     string `json:"symbol"`
		Qty        string `json:"qty"`
		Price      string `json:"price"`
		OrderType  string `json:"orderType"`
		MarketUnit string `json:"marketUnit"`
		Request    []struct {
			Symbol string `json:"symbol"`
			Qty    string `json:"qty"`
			Price  string `json:"price"`
		} `json:"request"`
	}
	json.Unmarshal(body, &one)
	sym := strings.ToUpper(one.Symbol)
	switch path {
	case "/v5/order/create":
		o := Order{Symbol: sym, Notional: notional(one.Price, one.Qty, "")}
		if one.OrderType == "Market" {
			o = Order{Symbol: sym, Quantity: num(one.Qty)}
			if one.MarketUnit == "quoteCoin" {
				o = Order{Symbol: sym, Notional: num(one.Qty)} // a spot market buy's qty is in the quote coin
			}
		}
		return Request{Kind: Place, Orders: []Order{o}}
	case "/v5/order/create-batch":
		r := Request{Kind: Place}
		for _, o := range one.Request {
			r.Orders = append(r.Orders, unpriced(strings.ToUpper(o.Symbol), notional(o.Price, o.Qty, ""), o.Qty))
		}
		if len(r.Orders) == 0 {
			r.Orders = []Order{{}}
		}
		return r
	case "/v5/order/cancel", "/v5/order/cancel-all", "/v5/order/cancel-batch":
		return Request{Kind: Cancel, Symbol: sym}
	case "/v5/position/set-leverage", "/v5/position/switch-isolated", "/v5/position/switch-mode":
		return Request{Kind: Leverage, Symbol: sym}
	}
	return Request{}
}

func parseKraken(method, path string, body []byte) Request {
	if method != http.MethodPost {
		return Request{}
	}
	form, _ := url.ParseQuery(string(body))
	sym := strings.ToUpper(form.Get("pair"))
	switch path {
	case "/0/private/AddOrder":
		o := Order{Symbol: sym, Quantity: num(form.Get("volume"))}
		if form.Get("ordertype") != "market" {
			o = Order{Symbol: sym, Notional: num(form.Get("price")) * num(form.Get("volume"))}
		}
		return Request{Kind: Place, Orders: []Order{o}, Leverage: form.Get("leverage") != "" && form.Get("leverage") != "none"}
	case "/0/private/AddOrderBatch":
		var batch struct {
			Orders []struct {
				OrderType string `json:"ordertype"`
				Price     string `json:"price"`
				Volume    string `json:"volume"`
			} `json:"orders"`
			Pair string `json:"pair"`
		}
		json.Unmarshal(body, &batch)
		r := Request{Kind: Place}
		for _, o := range batch.Orders {
			v := 0.0
			if o.OrderType != "market" {
				v = num(o.Price) * num(o.Volume)
			}
			r.Orders = append(r.Orders, Order{Symbol: strings.ToUpper(batch.Pair), Notional: v})
		}
		if len(r.Orders) == 0 {
			r.Orders = []Order{{Symbol: sym}}
		}
		return r
	case "/0/private/CancelOrder", "/0/private/CancelAll", "/0/private/CancelOrderBatch", "/0/private/CancelAllOrdersAfter":
		return Request{Kind: Cancel}
	}
	return Request{}
}
