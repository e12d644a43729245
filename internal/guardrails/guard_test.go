package guardrails

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"sluice/internal/config"
)

// TestParse reads the order endpoints as each exchange documents them.
func TestParse(t *testing.T) {
	for _, tc := range []struct {
		exchange, method, path, query, body string
		kind                                Kind
		orders                              []Order
	}{
		{"binance", "POST", "/api/v3/order", "", "symbol=btcusdt&side=BUY&type=LIMIT&quantity=0.5&price=20000", Place, []Order{{Symbol: "BTCUSDT", Notional: 10000}}},
		{"binance", "POST", "/api/v3/order", "symbol=ETHUSDT&type=MARKET&quoteOrderQty=250", "", Place, []Order{{Symbol: "ETHUSDT", Notional: 250}}},
		{"binance", "POST", "/api/v3/order", "", "symbol=ETHUSDT&type=MARKET&quantity=1", Place, []Order{{Symbol: "ETHUSDT", Quantity: 1}}},
		{"binance", "POST", "/api/v3/order/test", "", "symbol=ETHUSDT&quantity=1&price=1", Other, nil},
		{"binance", "POST", "/fapi/v1/batchOrders", "", "batchOrders=" + url.QueryEscape(`[{"symbol":"BTCUSDT","quantity":"0.1","price":"30000"},{"symbol":"ETHUSDT","quantity":"2","price":"2000"}]`), Place, []Order{{Symbol: "BTCUSDT", Notional: 3000}, {Symbol: "ETHUSDT", Notional: 4000}}},
		{"binance", "DELETE", "/api/v3/order", "symbol=BTCUSDT&orderId=1", "", Cancel, nil},
		{"binance", "POST", "/fapi/v1/leverage", "", "symbol=BTCUSDT&leverage=20", Leverage, nil},
		{"binance", "GET", "/api/v3/order", "symbol=BTCUSDT&orderId=1", "", Other, nil},
		{"bybit", "POST", "/v5/order/create", "", `{"category":"spot","symbol":"BTCUSDT","side":"Buy","orderType":"Limit","qty":"0.01","price":"50000"}`, Place, []Order{{Symbol: "BTCUSDT", Notional: 500}}},
		{"bybit", "POST", "/v5/order/create", "", `{"category":"spot","symbol":"BTCUSDT","side":"Buy","orderType":"Market","qty":"100","marketUnit":"quoteCoin"}`, Place, []Order{{Symbol: "BTCUSDT", Notional: 100}}},
		{"bybit", "POST", "/v5/order/create", "", `{"category":"linear","symbol":"BTCUSDT","side":"Buy","orderType":"Market","qty":"0.01"}`, Place, []Order{{Symbol: "BTCUSDT", Quantity: 0.01}}},
		{"bybit", "POST", "/v5/order/cancel", "", `{"category":"spot","symbol":"BTCUSDT","orderId":"1"}`, Cancel, nil},
		{"bybit", "POST", "/v5/position/set-leverage", "", `{"category":"linear","symbol":"BTCUSDT","buyLeverage":"10","sellLeverage":"10"}`, Leverage, nil},
		{"kraken", "POST", "/0/private/AddOrder", "", "nonce=1&ordertype=limit&type=buy&volume=1.25&pair=XBTUSD&price=27500", Place, []Order{{Symbol: "XBTUSD", Notional: 34375}}},
		{"kraken", "POST", "/0/private/AddOrder", "", "nonce=1&ordertype=limit&type=buy&volume=1&pair=XBTUSD&price=1&leverage=5", Place, []Order{{Symbol: "XBTUSD", Notional: 1}}}, // and a leverage change
		{"kraken", "POST", "/0/private/CancelOrder", "", "nonce=1&txid=X", Cancel, nil},
	} {
		q, _ := url.ParseQuery(tc.query)
		got := Parse(tc.exchange, tc.method, tc.path, q, []byte(tc.body))
		if got.Kind != tc.kind || len(got.Orders) != len(tc.orders) {
			t.Errorf("%s %s %s: %+v, want kind %d with %v", tc.exchange, tc.method, tc.path, got, tc.kind, tc.orders)
			continue
		}
		for i, o := range tc.orders {
			if got.Orders[i] != o {
				t.Errorf("%s %s: order %d %+v, want %+v", tc.exchange, tc.path, i, got.Orders[i], o)
			}
		}
	}
}

// TestWindows: the per-minute count forgets an order a minute after it,
// the per-day one a day after.
func TestWindows(t *testing.T) {
	g := New()
	scopes := []Scope{{ID: "client:b", Key: "clients.b.limits", Limits: &config.TradeLimits{OrdersPerMinute: 2, OrdersPerDay: 3}}}
	order := Request{Kind: Place, Orders: []Order{{Symbol: "BTCUSDT", Notional: 10}}}
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *Refusal { r, _ := g.Check(scopes, order, t0.Add(d)); return r }
	if at(0) != nil || at(time.Second) != nil {
		t.Fatal("the first two orders of the minute refused")
	}
	if r := at(30 * time.Second); r == nil || r.Limit != "orders_per_minute" {
		t.Errorf("the third order within the minute: %+v", r)
	}
	if r := at(61 * time.Second); r != nil {
		t.Errorf("an order a minute after the first two: %+v", r)
	}
	if r := at(2 * time.Minute); r == nil || r.Limit != "orders_per_day" {
		t.Errorf("the fourth order of the day: %+v", r)
	}
	if r := at(24*time.Hour + 2*time.Minute); r != nil {
		t.Errorf("an order a day later: %+v", r)
	}
	// A halt with an end lifts itself.
	g.Halt(Halt{Scope: "client:b", Mode: CancelOnly, Reason: "test", Since: t0, Until: t0.Add(25 * time.Hour)})
	if r := at(24*time.Hour + 3*time.Minute); r == nil || r.Limit != "halt" {
		t.Errorf("an order while halted: %+v", r)
	}
	if r := at(25*time.Hour + time.Second); r != nil {
		t.Errorf("an order after the halt's end: %+v", r)
	}
}

// BenchmarkCheck: what the guardrails cost an order (read and checked
// against a client's, a group's and a key's limits) against the same order
// read by a client without limits.
func BenchmarkCheck(b *testing.B) {
	body := []byte("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=20000&timestamp=1700000000000&signature=" + strings.Repeat("a", 64))
	limits := &config.TradeLimits{OrdersPerMinute: 1 << 30, OrdersPerDay: 1 << 30, NotionalPerOrder: 1e9, NotionalPerDay: 1e18, Symbols: []string{"ETHUSDT", "BTCUSDT"}}
	for _, bc := range []struct {
		name   string
		scopes []Scope
	}{
		{"limits=none", []Scope{{ID: "client:b"}}},
		{"limits=client+group+key", []Scope{{ID: "client:b", Limits: limits}, {ID: "group:g", Limits: limits}, {ID: "key:k", Limits: limits}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			g := New()
			now := time.Now()
			for b.Loop() {
				req := Parse("binance", http.MethodPost, "/api/v3/order", nil, body)
				if r, _ := g.Check(bc.scopes, req, now); r != nil {
					b.Fatal("refused")
				}
			}
		})
	}
}

// TestWarnings: an order that takes a limit's use to its warn_at share
// warns once; the next, past it, does not warn again.
func TestWarnings(t *testing.T) {
	g := New()
	half := 0.5
	scopes := []Scope{{ID: "client:b", Key: "clients.b.limits", Limits: &config.TradeLimits{OrdersPerMinute: 4, NotionalPerDay: 100, WarnAt: &half}}}
	now := time.Now()
	var got []string
	for _, v := range []float64{10, 10, 40, 10} {
		_, ws := g.Check(scopes, Request{Kind: Place, Orders: []Order{{Symbol: "BTCUSDT", Notional: v}}}, now)
		var names []string
		for _, w := range ws {
			names = append(names, w.Key)
		}
		got = append(got, strings.Join(names, "+"))
	}
	if want := []string{"", "clients.b.limits.orders_per_minute", "clients.b.limits.notional_per_day", ""}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("warnings per order: %q, want %q", got, want)
	}
	uses := g.Uses(scopes, now)
	if len(uses) != 2 || uses[0] != (Use{"client:b", "orders_per_minute", 4, 4}) || uses[1] != (Use{"client:b", "notional_per_day", 70, 100}) {
		t.Errorf("Uses: %+v", uses)
	}
}

// TestPrices reads the ticker answers of each exchange, and forgets a
// price that is too old to value an order.
func TestPrices(t *testing.T) {
	p := NewPrices()
	now := time.Now()
	p.observe("binance", []byte(`[{"symbol":"BTCUSDT","price":"20000.5"},{"symbol":"ETHUSDT","bidPrice":"1999","askPrice":"2001","bidQty":"1","askQty":"1"}]`), now)
	p.observe("binance", []byte(`{"symbol":"BNBUSDT","lastPrice":"300","volume":"1"}`), now)
	p.observe("bybit", []byte(`{"retCode":0,"result":{"category":"spot","list":[{"symbol":"SOLUSDT","lastPrice":"150.25"}]}}`), now)
	p.observe("kraken", []byte(`{"error":[],"result":{"XXBTZUSD":{"a":["1","1","1"],"c":["27500.1","0.01"]}}}`), now)
	for _, tc := range []struct {
		exchange, symbol string
		want             float64
	}{{"binance", "btcusdt", 20000.5}, {"binance", "ETHUSDT", 2000}, {"binance", "BNBUSDT", 300}, {"bybit", "SOLUSDT", 150.25}, {"kraken", "XXBTZUSD", 27500.1}} {
		if got, ok := p.Price(tc.exchange, tc.symbol, now); !ok || got != tc.want {
			t.Errorf("%s %s: %v %v, want %v", tc.exchange, tc.symbol, got, ok, tc.want)
		}
	}
	if _, ok := p.Price("bybit", "BTCUSDT", now); ok {
		t.Error("a price of another exchange's symbol")
	}
	if _, ok := p.Price("binance", "BTCUSDT", now.Add(priceMaxAge+time.Second)); ok {
		t.Error("a price older than priceMaxAge still values orders")
	}
}

// TestOpenOrdersBybitKraken: Bybit's and Kraken's answers open and close
// orders, and their open-orders lists correct the count.
func TestOpenOrdersBybitKraken(t *testing.T) {
	g := New()
	scopes := []Scope{{ID: "client:b", Key: "clients.b.limits", Limits: &config.TradeLimits{OpenOrders: 5}}}
	count := func() int { g.mu.Lock(); defer g.mu.Unlock(); return g.openCount("client:b") }
	form := func(s string) url.Values { v, _ := url.ParseQuery(s); return v }
	// Bybit: two limit orders open, a market order does not stay, a cancel closes one.
	for i, body := range []string{`{"symbol":"BTCUSDT","orderType":"Limit","qty":"1","price":"1"}`, `{"symbol":"BTCUSDT","orderType":"Limit","qty":"1","price":"1"}`, `{"symbol":"BTCUSDT","orderType":"Market","qty":"1"}`} {
		g.observeOrders(scopes, "key:by", "bybit", "POST", "/v5/order/create", nil, []byte(body), fmt.Appendf(nil, `{"retCode":0,"result":{"orderId":"o%d"}}`, i))
	}
	if n := count(); n != 2 {
		t.Fatalf("after two Bybit limit orders and a market order: %d open, want 2", n)
	}
	g.observeOrders(scopes, "key:by", "bybit", "POST", "/v5/order/cancel", nil, []byte(`{"symbol":"BTCUSDT","orderId":"o0"}`), []byte(`{"retCode":0,"result":{"orderId":"o0"}}`))
	if n := count(); n != 1 {
		t.Fatalf("after a Bybit cancel: %d open, want 1", n)
	}
	g.observeOrders(scopes, "key:by", "bybit", "GET", "/v5/order/realtime", form("category=spot&symbol=BTCUSDT"), nil, []byte(`{"retCode":0,"result":{"list":[]}}`))
	if n := count(); n != 0 {
		t.Fatalf("after Bybit's open orders listed none: %d open, want 0", n)
	}
	// Kraken: txids open, a cancel by txid, OpenOrders corrects.
	g.observeOrders(scopes, "key:kr", "kraken", "POST", "/0/private/AddOrder", form("ordertype=limit&pair=XBTUSD"), nil, []byte(`{"error":[],"result":{"txid":["T1"]}}`))
	g.observeOrders(scopes, "key:kr", "kraken", "POST", "/0/private/AddOrder", form("ordertype=limit&pair=XBTUSD"), nil, []byte(`{"error":[],"result":{"txid":["T2"]}}`))
	g.observeOrders(scopes, "key:kr", "kraken", "POST", "/0/private/AddOrder", form("ordertype=market&pair=XBTUSD"), nil, []byte(`{"error":[],"result":{"txid":["T3"]}}`))
	if n := count(); n != 2 {
		t.Fatalf("after two Kraken limit orders and a market order: %d open, want 2", n)
	}
	g.observeOrders(scopes, "key:kr", "kraken", "POST", "/0/private/CancelOrder", form("txid=T1"), nil, []byte(`{"error":[],"result":{"count":1}}`))
	g.observeOrders(scopes, "key:kr", "kraken", "POST", "/0/private/OpenOrders", form(""), nil, []byte(`{"error":[],"result":{"open":{}}}`))
	if n := count(); n != 0 {
		t.Fatalf("after a Kraken cancel and an empty OpenOrders: %d open, want 0", n)
	}
}

// downRedis is a fleet's shared counts while Redis does not answer.
type downRedis struct{}

func (downRedis) CheckAdd(context.Context, []string, [][3]float64, int, float64, time.Time) (int, string, [][3]float64, error) {
	return -1, "", nil, errors.New("dial tcp: connection refused")
}

// TestSharedCountsDown: while the fleet's counts do not answer, an
// instance counts its orders alone.
func TestSharedCountsDown(t *testing.T) {
	g := New()
	g.Shared = downRedis{}
	scopes := []Scope{{ID: "client:b", Key: "clients.b.limits", Limits: &config.TradeLimits{OrdersPerMinute: 2}}}
	order := Request{Kind: Place, Orders: []Order{{Symbol: "BTCUSDT", Notional: 1}}}
	now := time.Now()
	for i, want := range []string{"", "", "orders_per_minute"} {
		r, _ := g.Check(scopes, order, now)
		if got := ""; r != nil {
			got = r.Limit
			if got != want {
				t.Errorf("order %d: refused by %s, want %q", i+1, got, want)
			}
		} else if want != "" {
			t.Errorf("order %d passed, want it refused by %s", i+1, want)
		}
	}
}
