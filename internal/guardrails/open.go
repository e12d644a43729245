package guardrails

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// Open orders are tracked per scope as "account symbol orderId": placed
// orders the exchange left open, until a cancel, a fill or the exchange's
// own list of open orders says otherwise. Binance's answers are read
// (spot and USD-M futures).

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
	if exchange != "binance" {
		return false
	}
	switch path {
	case "/api/v3/order", "/fapi/v1/order":
		return true
	case "/api/v3/openOrders", "/fapi/v1/openOrders", "/fapi/v1/batchOrders", "/fapi/v1/allOpenOrders":
		return method != http.MethodPost || path == "/fapi/v1/batchOrders"
	}
	return false
}

// observeOrders reads an answer about orders (to a request of method and
// path with reqParams) and updates what is open.
func (g *Guard) observeOrders(scopes []Scope, account, method, path string, reqParams url.Values, body []byte) {
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

// account names the exchange account of a request: the vault key it is
// signed with, or (a hash of) the API key the bot sent.
func account(scopes []Scope, r *http.Request) string {
	for _, s := range scopes {
		if strings.HasPrefix(s.ID, "key:") {
			return s.ID
		}
	}
	sum := sha256.Sum256([]byte(r.Header.Get("X-MBX-APIKEY")))
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
