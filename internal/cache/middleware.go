package cache

import "net/http"

// Middleware is the response-cache stage: a fresh hit is answered from
// memory, a miss is coalesced with its twins and filled through next (the
// throttle and the upstream), and what the route's Rules do not cache goes
// straight on. of returns the route's Rules (nil: off) and its "host:port".
func Middleware(c *Cache, of func(*http.Request) (*Rules, string)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rules, host := of(r)
			c.Handle(w, r, host, rules, next)
		})
	}
}
