package policy

import (
	"fmt"
	"net/http"

	"sluice/internal/decision"
	"sluice/internal/obs"
)

// Middleware is the policy stage: it decides the request's target against
// p and records the decision; a denied target is answered 403 with the key
// that would allow it, and nothing is resolved or dialed for it. What
// report mode lets through is noted in reports.
func Middleware(p *Policy, reports *Reports) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := decision.From(r.Context())
			d := p.DecideRecord(rec)
			rec.Action, rec.Rule = d.Action, d.rule()
			if d.Report != "" {
				rec.Reason = "report: " + d.Report
				reports.note(rec, d)
			}
			if d.Action != decision.Deny {
				next.ServeHTTP(w, r)
				return
			}
			rec.Refuse(decision.Policy, d.Reason)
			obs.WriteError(w, r, &obs.Error{
				Status: http.StatusForbidden, Msg: d.Reason, Host: d.Target.String(),
				Detail:      fmt.Sprintf("sluice refused %s (%s); to allow it, %s", d.Target, d.Reason, d.Fix),
				Hint:        d.Fix,
				ProxyStatus: "http_request_denied",
			})
		})
	}
}
