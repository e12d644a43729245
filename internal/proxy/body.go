package proxy

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// BodyIdle is the slow-body stage: each read of a request body must bring
// bytes within idle (timeouts.body_idle), or the read fails, and with it
// the rules' reading or the forwarding of the body (answered 408 while an
// answer is still possible). A client that sends one byte now and then
// holds no socket, upstream connection or budget for as long as it likes.
func (s *Server) BodyIdle(idle time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body == nil || r.Body == http.NoBody || r.Method == http.MethodConnect {
				next.ServeHTTP(w, r)
				return
			}
			b := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: idle}
			// Made here, stopped, before the body can be read on another
			// goroutine (the forwarder's transport): Reset and Stop are safe
			// from any goroutine, the field is not.
			b.timer = time.AfterFunc(time.Hour, b.expire)
			b.timer.Stop()
			defer b.timer.Stop()
			r.Body = b
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), idleBodyKey{}, b)))
		})
	}
}

type idleBodyKey struct{}

// idleBody fails a read that waits longer than idle. It marks itself timed
// out before it forces the read to fail, so that whoever sees the failure
// (the server cancels the request when a body read fails) can tell why.
type idleBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	idle     time.Duration
	timer    *time.Timer
	timedOut atomic.Bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	return n, err
}

func (b *idleBody) expire() {
	b.timedOut.Store(true)
	b.rc.SetReadDeadline(time.Now()) // the pending read fails now
}

// bodyTimedOut reports whether r's body was cut off by BodyIdle.
func bodyTimedOut(r *http.Request) bool {
	b, ok := r.Context().Value(idleBodyKey{}).(*idleBody)
	return ok && b.timedOut.Load()
}
