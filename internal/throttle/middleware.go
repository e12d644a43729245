package throttle

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"sluice/internal/decision"
	"sluice/internal/obs"
)

// Middleware is the throttle stage, the last before the upstream: only what
// goes upstream spends budget (cache hits never get here). A request waits
// for its budgets, or is answered 429 by sluice with Retry-After and sends
// nothing upstream; the upstream's answer re-syncs the budgets as it passes
// back. of returns the route's throttles (none: no budget) and its host name.
func Middleware(l *Limiter, of func(*http.Request) (Specs, string)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			specs, host := of(r)
			picked := specs.PickAll(r)
			if len(picked) == 0 {
				next.ServeHTTP(w, r)
				return
			}
			rec := decision.From(r.Context())
			var held [2]*Lease // a request spends one budget, or two stacked
			leases := held[:0]
			defer func() {
				for _, le := range leases {
					le.Release()
				}
			}()
			var waited time.Duration
			for _, spec := range picked {
				rec.Budget = spec.name
				lease, err := l.Acquire(r.Context(), spec, host, r)
				if err != nil {
					l.Refuse(w, r, spec, host, err, decision.Budget, "upstream budget exhausted")
					return
				}
				leases = append(leases, lease)
				waited += lease.Waited
			}
			rec.Budget = picked[0].name
			rec.Waited = waited
			w.Header().Set("X-Sluice-Wait", strconv.FormatFloat(waited.Seconds(), 'f', 3, 64))
			ow := &observingWriter{ResponseWriter: w, leases: leases, host: host}
			next.ServeHTTP(ow, r)
			if ow.cost != nil {
				for _, le := range leases {
					if le.spec.feedback.has(feedbackShopifyGraphQL) {
						le.observeCost(ow.cost.Bytes())
					}
				}
			}
		})
	}
}

// Refuse answers r, which err kept from spec's budget on host: nothing if
// its client left (recorded as such), else 429 with Retry-After and a
// reason naming the budget, recorded as refused by stage with msg.
func (l *Limiter) Refuse(w http.ResponseWriter, r *http.Request, spec *Spec, host string, err error, stage decision.Stage, msg string) {
	rec := decision.From(r.Context())
	if r.Context().Err() != nil {
		rec.Status, rec.Reason, rec.Err = obs.StatusClientClosed, "client left while waiting for "+spec.name, err
		return
	}
	retry := l.RetryAfter(spec, host, r)
	rec.Refuse(stage, msg)
	w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
	obs.WriteError(w, r, &obs.Error{Status: http.StatusTooManyRequests, Msg: msg, Host: rec.Target.String(),
		Detail:      fmt.Sprintf("no budget left in %s on %s in time; sluice sent nothing upstream; retry in %s", spec.name, host, retry.Round(time.Millisecond)),
		ProxyStatus: "connection_limit_reached"})
}

var _ http.ResponseWriter = (*observingWriter)(nil)

// observingWriter re-syncs the leases' budgets from the upstream's answer
// as it is written back: the status and quota headers, and a GraphQL cost
// at the end of the body.
type observingWriter struct {
	http.ResponseWriter
	leases   []*Lease
	host     string
	observed bool
	cost     *bytes.Buffer // the body so far, for the shopify_graphql feedback
}

func (w *observingWriter) WriteHeader(code int) {
	if !w.observed && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.observed = true
		for _, le := range w.leases {
			le.observeHead(code, w.Header(), w.host)
			if le.spec.feedback.has(feedbackShopifyGraphQL) {
				w.cost = &bytes.Buffer{}
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *observingWriter) Write(p []byte) (int, error) {
	if !w.observed {
		w.WriteHeader(http.StatusOK)
	}
	if w.cost != nil && w.cost.Len()+len(p) <= maxCostBody {
		w.cost.Write(p)
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach Flush, Hijack and deadlines.
func (w *observingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
