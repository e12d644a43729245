package guardrails

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Open orders are tracked per scope as "account symbol orderId": placed
// orders the exchange left open, until a cancel, a fill or the exchange's
// own list of open orders says otherwise. Binance's (spot and USD-M
// futures), Bybit v5's and Kraken's answers are read; Kraken's orders are
// tracked by txid alone.

// orderState is one order as an exchange's answer describes it.
type orderState struct {
	Symbol  string          `json:"symbol"`
	OrderID json.RawMessage `json:"orderId"`
	Status  string          `json:"status"`
}

func (o orderState) id() string { return strings.Trim(string(o.OrderID), `"`) }

// open reports whether an order in status is still on the book.
func (o orderState) open() bool { return o.Status == "NEW" || o.Status == "PARTIALLY_FILLED" }

func openKey(account, symbol, id string) string {
	return account + " " + strings.ToUpper(symbol) + " " + id
}

// openCount is how many orders scope has open; the caller holds g.mu.
func (g *Guard) openCount(scope string) int { return len(g.open[scope]) }

// track records orders as open, or no longer open, for each of scopes.
func (g *Guard) track(scopes []Scope, account string, orders []orderState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range scopes {
		if s.Limits == nil || s.Limits.OpenOrders == 0 {
			continue
		}
		set := g.open[s.ID]
		if set == nil {
			set = map[string]bool{}
			g.open[s.ID] = set
		}
		for _, o := range orders {
			if o.id() == "" {
				continue
			}
			k := openKey(account, o.Symbol, o.id())
			if o.open() {
				set[k] = true
			} else {
				delete(set, k)
			}
		}
	}
}

// closeSymbol forgets every open order of account on symbol (a cancel of
// all of them).
func (g *Guard) closeSymbol(scopes []Scope, account, symbol string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	prefix := openKey(account, symbol, "")
	for _, s := range scopes {
		for k := range g.open[s.ID] {
			if strings.HasPrefix(k, prefix) {
				delete(g.open[s.ID], k)
			}
		}
	}
}

// correct keeps, of the orders tracked as open for account (on symbol, or
// on every symbol when symbol is ""), only those the exchange lists open.
func (g *Guard) correct(scopes []Scope, account, symbol string, listed []orderState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	still := map[string]bool{}
	for _, o := range listed {
		still[openKey(account, o.Symbol, o.id())] = true
	}
	prefix := account + " "
	if symbol != "" {
		prefix = openKey(account, symbol, "")
	}
	for _, s := range scopes {
		for k := range g.open[s.ID] {
			if strings.HasPrefix(k, prefix) && !still[k] {
				delete(g.open[s.ID], k)
			}
		}
	}
}

// answersOrders reports whether the answer to method and path on exchange
// tells which orders are open.
func answersOrders(exchange, method, path string) bool {
	switch exchange {
	case "binance":
		switch path {
		case "/api/v3/order", "/fapi/v1/order":
			return true
		case "/api/v3/openOrders", "/fapi/v1/openOrders", "/fapi/v1/batchOrders", "/fapi/v1/allOpenOrders":
			return method != http.MethodPost || path == "/fapi/v1/batchOrders"
		}
	case "bybit":
		return method == http.MethodPost && (path == "/v5/order/create" || path == "/v5/order/cancel" || path == "/v5/order/cancel-all") ||
			method == http.MethodGet && path == "/v5/order/realtime"
	case "kraken":
		return method == http.MethodPost && (path == "/0/private/AddOrder" || path == "/0/private/CancelOrder" || path == "/0/private/CancelAll" || path == "/0/private/OpenOrders")
	}
	return false
}

// observeOrders reads an answer about orders (to a request of method and
// path on exchange, with reqParams: the query and a form body, or
// reqBody's JSON) and updates what is open.
func (g *Guard) observeOrders(scopes []Scope, account, exchange, method, path string, reqParams url.Values, reqBody, body []byte) {
	switch exchange {
	case "binance":
		g.observeBinance(scopes, account, method, path, reqParams, body)
	case "bybit":
		g.observeBybit(scopes, account, path, reqParams, reqBody, body)
	case "kraken":
		g.observeKraken(scopes, account, path, reqParams, body)
	}
}

func (g *Guard) observeBinance(scopes []Scope, account, method, path string, reqParams url.Values, body []byte) {
	var list []orderState
	if bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
		json.Unmarshal(body, &list)
	} else {
		var one orderState
		if json.Unmarshal(body, &one) == nil {
			list = []orderState{one}
		}
	}
	symbol := strings.ToUpper(reqParams.Get("symbol"))
	switch {
	case method == http.MethodGet && strings.HasSuffix(path, "/openOrders"):
		g.correct(scopes, account, symbol, list)
	case method == http.MethodDelete && (strings.HasSuffix(path, "/openOrders") || strings.HasSuffix(path, "/allOpenOrders")):
		for _, o := range list {
			if o.Symbol != "" {
				symbol = o.Symbol
			}
		}
		if symbol != "" {
			g.closeSymbol(scopes, account, symbol)
		}
	case method == http.MethodDelete:
		for i := range list {
			list[i].Status = "CANCELED"
		}
		g.track(scopes, account, list)
	default:
		g.track(scopes, account, list)
	}
}

// observeBybit reads Bybit v5: a create answers the order's id (open
// unless it was a market order, which fills at once), a cancel the id it
// cancelled, /v5/order/realtime the open orders.
func (g *Guard) observeBybit(scopes []Scope, account, path string, reqParams url.Values, reqBody, body []byte) {
	var answer struct {
		RetCode int `json:"retCode"`
		Result  struct {
			OrderID string `json:"orderId"`
			List    []struct {
				OrderID     string `json:"orderId"`
				Symbol      string `json:"symbol"`
				OrderStatus string `json:"orderStatus"`
			} `json:"list"`
		} `json:"result"`
	}
	if json.Unmarshal(body, &answer) != nil || answer.RetCode != 0 {
		return
	}
	var req struct{ Symbol, OrderType, OrderID string }
	json.Unmarshal(reqBody, &req)
	sym := strings.ToUpper(req.Symbol)
	id := func(s string) json.RawMessage { return json.RawMessage(strconv.Quote(s)) }
	switch path {
	case "/v5/order/create":
		status := "NEW"
		if req.OrderType == "Market" {
			status = "FILLED"
		}
		g.track(scopes, account, []orderState{{sym, id(answer.Result.OrderID), status}})
	case "/v5/order/cancel":
		g.track(scopes, account, []orderState{{sym, id(cmp.Or(answer.Result.OrderID, req.OrderID)), "CANCELED"}})
	case "/v5/order/cancel-all":
		if sym != "" {
			g.closeSymbol(scopes, account, sym)
		}
	case "/v5/order/realtime":
		var open []orderState
		for _, o := range answer.Result.List {
			if o.OrderStatus == "New" || o.OrderStatus == "PartiallyFilled" || o.OrderStatus == "Untriggered" {
				open = append(open, orderState{strings.ToUpper(o.Symbol), id(o.OrderID), "NEW"})
			}
		}
		g.correct(scopes, account, strings.ToUpper(reqParams.Get("symbol")), open)
	}
}

// observeKraken reads Kraken: AddOrder answers its txids (open unless a
// market order), CancelOrder names the txid in the request, OpenOrders
// lists every open order by txid.
func (g *Guard) observeKraken(scopes []Scope, account, path string, reqParams url.Values, body []byte) {
	var answer struct {
		Error  []string        `json:"error"`
		Result json.RawMessage `json:"result"`
	}
	if json.Unmarshal(body, &answer) != nil || len(answer.Error) > 0 {
		return
	}
	id := func(s string) json.RawMessage { return json.RawMessage(strconv.Quote(s)) }
	switch path {
	case "/0/private/AddOrder":
		var r struct{ Txid []string }
		json.Unmarshal(answer.Result, &r)
		status := "NEW"
		if reqParams.Get("ordertype") == "market" {
			status = "FILLED"
		}
		var list []orderState
		for _, t := range r.Txid {
			list = append(list, orderState{"", id(t), status})
		}
		g.track(scopes, account, list)
	case "/0/private/CancelOrder":
		g.track(scopes, account, []orderState{{"", id(reqParams.Get("txid")), "CANCELED"}})
	case "/0/private/CancelAll":
		g.correct(scopes, account, "", nil)
	case "/0/private/OpenOrders":
		var r struct {
			Open map[string]json.RawMessage `json:"open"`
		}
		json.Unmarshal(answer.Result, &r)
		var open []orderState
		for t := range r.Open {
			open = append(open, orderState{"", id(t), "NEW"})
		}
		g.correct(scopes, account, "", open)
	}
}

// account names the exchange account of a request: the vault key it is
// signed with, or (a hash of) the API key the bot sent.
func account(scopes []Scope, r *http.Request) string {
	for _, s := range scopes {
		if strings.HasPrefix(s.ID, "key:") {
			return s.ID
		}
	}
	key := cmp.Or(r.Header.Get("X-MBX-APIKEY"), r.Header.Get("X-BAPI-API-KEY"), r.Header.Get("API-Key"))
	sum := sha256.Sum256([]byte(key))
	return "apikey:" + hex.EncodeToString(sum[:6])
}

// tracksOpen reports whether a scope of scopes limits open orders.
func tracksOpen(scopes []Scope) bool {
	for _, s := range scopes {
		if s.Limits != nil && s.Limits.OpenOrders > 0 {
			return true
		}
	}
	return false
}
