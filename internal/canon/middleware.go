package canon

import (
	"net/http"
	"net/url"

	"sluice/internal/decision"
	"sluice/internal/obs"
)

// Identify fixes a request's target (and, behind a trusted proxy, its
// client) in rec from what its entry point knows: the CONNECT line, the
// absolute URI, the intercepted connection, the reverse backend. A non-nil
// error is the answer to send instead.
type Identify func(r *http.Request, rec *decision.Record) *obs.Error

// Middleware is the canonical-request stage: it identifies the target, then
// rewrites the path to its canonical form in place, so that what every
// later stage decides on is what is forwarded upstream. A path without one
// is answered 400.
func Middleware(identify Identify) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := decision.From(r.Context())
			if e := identify(r, rec); e != nil {
				rec.Refuse(decision.Canon, e.Msg)
				obs.WriteError(w, r, e)
				return
			}
			if r.Method == http.MethodConnect || r.Method == http.MethodOptions && r.URL.Path == "*" {
				next.ServeHTTP(w, r)
				return
			}
			if err := Request(r); err != nil {
				rec.Refuse(decision.Canon, "bad path")
				obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "bad path", Host: rec.Target.String(),
					Detail: err.Error() + "; sluice forwards only paths with one spelling"})
				return
			}
			rec.Path = r.URL.Path
			next.ServeHTTP(w, r)
		})
	}
}

// Request rewrites r's path to its canonical form.
func Request(r *http.Request) error {
	escaped := r.URL.EscapedPath()
	p, err := Path(escaped)
	if err != nil {
		return err
	}
	if p == escaped && r.URL.Path != "" {
		return nil
	}
	decoded, err := url.PathUnescape(p)
	if err != nil {
		return err // Path writes only valid escapes
	}
	r.URL.Path, r.URL.RawPath = decoded, ""
	if decoded != p {
		r.URL.RawPath = p
	}
	return nil
}
