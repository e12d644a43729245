package streams

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"

	"sluice/internal/decision"
)

// Middleware is the streams stage of one route: a WebSocket upgrade to a
// public market stream joins the shared streams of its host; any other
// upgrade (a private stream, a host without a stream protocol) is spliced
// for its client alone, counted, and on a stream host spends the stream
// connection budget, never the REST one. spec is the route's (nil: no
// shared streams), client reaches its upstream, splice forwards an
// upgrade as it is.
func (hs *Hubs) Middleware(spec *Spec, client *http.Client, splice http.Handler) func(http.Handler) http.Handler {
	dial := func(ctx context.Context, url string) (*websocket.Conn, *http.Response, error) {
		return websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: client, CompressionMode: websocket.CompressionDisabled})
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isUpgrade(r) {
				next.ServeHTTP(w, r)
				return
			}
			rec := decision.From(r.Context())
			host := rec.Target.Host
			if spec == nil {
				hs.spliced(w, r, rec, host, next)
				return
			}
			ns, initial, combined, ok := spec.proto.Session(r)
			if !ok {
				// The budget's own wait is its window (minutes), right for
				// sluice's dials; a client is told sooner.
				ctx, cancel := context.WithTimeout(r.Context(), spliceWait)
				lease, err := hs.limit.Acquire(ctx, spec.budget, host, r)
				cancel()
				if err != nil {
					hs.limit.Refuse(w, r, spec.budget, host, err, decision.Streams, "stream connection budget exhausted")
					return
				}
				lease.Release()
				hs.spliced(w, r, rec, host, splice)
				return
			}
			h := hs.hub(host, ns, spec, func(ctx context.Context, path string) (*websocket.Conn, *http.Response, error) {
				return dial(ctx, "wss://"+rec.Target.Authority(443)+path)
			})
			hs.serve(w, r, rec, h, initial, combined)
		})
	}
}

// spliceWait bounds how long a spliced upgrade waits for the stream
// connection budget before its 429.
const spliceWait = 10 * time.Second

func (hs *Hubs) spliced(w http.ResponseWriter, r *http.Request, rec *decision.Record, host string, h http.Handler) {
	rec.Stream = &decision.StreamSession{}
	hs.metrics.clients.WithLabelValues(host, "spliced").Inc()
	defer hs.metrics.clients.WithLabelValues(host, "spliced").Dec()
	h.ServeHTTP(w, r)
}

// isUpgrade says whether r asks for a WebSocket.
func isUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}
