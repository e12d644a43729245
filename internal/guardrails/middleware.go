package guardrails

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/decision"
	"sluice/internal/metrics"
	"sluice/internal/obs"
)

// Metrics count the guardrails' refusals.
type Metrics struct {
	refusals *prometheus.CounterVec
	orders   *prometheus.CounterVec
	warnings *prometheus.CounterVec
}

// NewMetrics registers the guardrails' series with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_guardrails_refusals_total",
			Help: "Trading requests sluice refused, by the scope whose limit or halt refused them and the limit (orders_per_minute, symbols, halt, ...)."}, []string{"scope", "limit"}),
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_guardrails_orders_total",
			Help: "Orders that passed the guardrails, counted against each scope with limits."}, []string{"scope"}),
		warnings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_guardrails_warnings_total",
			Help: "Times an order took a scope's use of a limit to its warn_at share (default 80%)."}, []string{"scope", "limit"}),
	}
	m.refusals.WithLabelValues(HaltAll, "halt")
	return m, metrics.Register(reg, m.refusals, m.orders, m.warnings)
}

// Limits are the limit label values of the refusals.
var Limits = []string{"halt", "symbols", "leverage", "unpriced", "notional_per_order", "open_orders", "orders_per_minute", "orders_per_day", "notional_per_day"}

// Declare creates scope's series at zero.
func (m *Metrics) Declare(scope string) {
	m.orders.WithLabelValues(scope)
	for _, l := range Limits {
		m.refusals.WithLabelValues(scope, l)
	}
	for _, l := range []string{"orders_per_minute", "orders_per_day", "notional_per_day"} {
		m.warnings.WithLabelValues(scope, l)
	}
}

// maxOrderBody bounds the body read to check an order: orders are small.
const maxOrderBody = 1 << 20

// Middleware checks every trading request to exchange against the limits
// and halts of the scopes of returns. The request's body is read whole (it
// is small, and the next stages get it as it came). The prices of the
// exchange's ticker answers that pass are kept, to value market orders.
func Middleware(g *Guard, m *Metrics, log *slog.Logger, exchange string, of func(*http.Request) []Scope) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && g.Prices.Wanted() && tickerPath(exchange, r.URL.Path) {
				ww := &watch{ResponseWriter: w}
				next.ServeHTTP(ww, r)
				if ww.status == http.StatusOK {
					g.Prices.observe(exchange, ww.body.Bytes(), time.Now())
				}
				return
			}
			if r.Method != http.MethodPost && r.Method != http.MethodDelete {
				if r.Method == http.MethodGet && answersOrders(exchange, r.Method, r.URL.Path) {
					if scopes := of(r); tracksOpen(scopes) {
						// A bot asking for its orders: the exchange's answer corrects what is open.
						ww := &watch{ResponseWriter: w}
						next.ServeHTTP(ww, r)
						if ww.status == http.StatusOK {
							g.observeOrders(scopes, account(scopes, r), exchange, r.Method, r.URL.Path, r.URL.Query(), nil, ww.body.Bytes())
						}
						return
					}
				}
				next.ServeHTTP(w, r) // no exchange trades by GET
				return
			}
			scopes := of(r)
			rec := decision.From(r.Context())
			var body []byte
			if r.Body != nil && r.Body != http.NoBody {
				var err error
				body, err = io.ReadAll(io.LimitReader(r.Body, maxOrderBody+1))
				if err != nil {
					obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "request body unreadable", Host: rec.Target.String(), Err: err, Detail: err.Error()})
					return
				}
				if len(body) > maxOrderBody {
					rec.Refuse(decision.Guardrails, "order too large to check")
					obs.WriteError(w, r, &obs.Error{Status: http.StatusRequestEntityTooLarge, Msg: "order too large to check", Host: rec.Target.String(),
						Detail: "a trading request's body over 1 MiB cannot be checked against the trade limits"})
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
			}
			req := Parse(exchange, r.Method, r.URL.Path, r.URL.Query(), body)
			now := time.Now()
			for i, o := range req.Orders {
				if o.Notional == 0 && o.Quantity > 0 {
					if p, ok := g.Prices.Price(exchange, o.Symbol, now); ok {
						req.Orders[i].Notional = p * o.Quantity
					}
				}
			}
			refusal, warnings := g.Check(scopes, req, now)
			for _, w := range warnings {
				m.warnings.WithLabelValues(w.Scope, w.Limit).Inc()
				log.Warn("trade limit nearly reached", "scope", w.Scope, "limit", w.Key, "used", w.Used, "max", w.Max, "client", rec.Client)
			}
			if refusal != nil {
				m.refusals.WithLabelValues(refusal.Scope, refusal.Limit).Inc()
				reason := "trade limit: " + refusal.Limit
				if refusal.Limit == "halt" {
					reason = "trading halted"
				}
				rec.Refuse(decision.Guardrails, reason)
				obs.WriteError(w, r, &obs.Error{Status: http.StatusForbidden, Msg: reason, Host: rec.Target.String(), Detail: refusal.Detail})
				return
			}
			if req.Kind == Place {
				for _, s := range scopes {
					if s.Limits != nil {
						m.orders.WithLabelValues(s.ID).Add(float64(len(req.Orders)))
					}
				}
			}
			if answersOrders(exchange, r.Method, r.URL.Path) && tracksOpen(scopes) {
				ww := &watch{ResponseWriter: w}
				next.ServeHTTP(ww, r)
				if ww.status == http.StatusOK {
					g.observeOrders(scopes, account(scopes, r), exchange, r.Method, r.URL.Path, params(r.URL.Query(), body), body, ww.body.Bytes())
				}
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
