package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"sluice/internal/decision"
	"sluice/internal/obs"
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

// maxBufferedBody is the largest request body BufferBody reads whole;
// orders and API calls are far smaller, uploads stream.
const maxBufferedBody = 1 << 20

// BufferBody is the stage before the budget: a request body of up to
// maxBufferedBody is read whole before anything is spent on it. A client
// that sends slowly then holds neither budget (while a budget waits for
// the upstream's first count, its probe holds every other client of it)
// nor an upstream connection. A larger body streams.
func (s *Server) BufferBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength > maxBufferedBody || r.Header.Get("Upgrade") != "" {
			next.ServeHTTP(w, r)
			return
		}
		orig := r.Body
		buf, err := io.ReadAll(io.LimitReader(orig, maxBufferedBody+1))
		if err != nil {
			answerBodyError(w, r, err)
			return
		}
		switch {
		case len(buf) > maxBufferedBody:
			r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), orig), orig}
		case len(buf) == 0:
			r.Body, r.ContentLength = http.NoBody, 0
		default:
			r.Body, r.ContentLength = readCloser{bytes.NewReader(buf), orig}, int64(len(buf))
		}
		next.ServeHTTP(w, r)
	})
}

type readCloser struct {
	io.Reader
	io.Closer
}

// answerBodyError answers a request whose body could not be read: it
// stalled (408), a stage reading it refused it (that stage's answer), its
// client left (nothing to answer), or it was malformed (400).
func answerBodyError(w http.ResponseWriter, r *http.Request, err error) {
	rec := decision.From(r.Context())
	var ae answeringError
	switch {
	case bodyTimedOut(r):
		obs.WriteBodyTimeout(w, r, err)
	case errors.As(err, &ae):
		ae.Answer(w, r)
	case r.Context().Err() != nil:
		rec.Status, rec.Reason, rec.Err = obs.StatusClientClosed, "client closed the request", err
	default:
		obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "bad request body", Host: rec.Target.String(),
			Detail: "the request body could not be read: " + err.Error(), Err: err})
	}
}
