package blobs

import "net/http"

// Middleware is the blob stage: a request its route's Matcher names as an
// immutable file is answered from the store, or downloaded once through
// next and stored; every other request goes on to next. of returns the
// route's Matcher (nil: none) and its "host:port". A nil store is off.
func Middleware(s *Store, of func(*http.Request) (*Matcher, string)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if s == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m, host := of(r)
			if !m.Match(r) {
				next.ServeHTTP(w, r)
				return
			}
			s.Handle(w, r, host, m, next)
		})
	}
}
