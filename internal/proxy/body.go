package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"sluice/internal/bodymem"
	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/obs"
)

// BodyLimits are the slow-body stage's limits, from timeouts and limits.
type BodyLimits struct {
	// Idle: each read must bring bytes within it (timeouts.body_idle).
	Idle time.Duration
	// Whole: the last byte must come within it of the headers (timeouts.body).
	Whole time.Duration
	// MinRate, in bytes per second, must be met over each Window of
	// waiting (limits.body_min_rate, limits.body_rate_window); 0: none.
	MinRate int64
	Window  time.Duration
	// Memory is what all bodies read whole may hold together
	// (limits.buffered_bodies).
	Memory int64
}

// BodyLimitsOf returns c's request-body limits.
func BodyLimitsOf(c *config.Config) BodyLimits {
	return BodyLimits{Idle: c.Timeouts.BodyIdle.D(), Whole: c.Timeouts.Body.D(), MinRate: int64(*c.Limits.BodyMinRate), Window: c.Limits.BodyRateWindow.D(),
		Memory: int64(c.Limits.BufferedBodies)}
}

// SlowBody is the slow-body stage: a request body must bring bytes within
// lim.Idle of each read, arrive whole within lim.Whole of its headers (plus
// a second for every 64 KiB it brought, so that a large upload at a good
// rate is not cut off), and
// send at least lim.MinRate bytes a second over each lim.Window that
// sluice waits for it. Otherwise the read fails, and with it the rules'
// reading or the forwarding of the body (answered 408 with the limit
// while an answer is still possible). A client that trickles holds no
// socket, upstream connection, budget or memory for as long as it likes.
// Only time spent waiting on the client counts: a body that waits on a
// slow upstream is not slow.
func (s *Server) SlowBody(lim BodyLimits) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body == nil || r.Body == http.NoBody || r.Method == http.MethodConnect {
				next.ServeHTTP(w, r)
				return
			}
			b := &slowBody{ReadCloser: r.Body, rc: http.NewResponseController(w), lim: lim, deadline: time.Now().Add(lim.Whole)}
			// Made here, stopped, before the body can be read on another
			// goroutine (the forwarder's transport): Reset and Stop are safe
			// from any goroutine, the field is not.
			b.timer = time.AfterFunc(time.Hour, b.expire)
			b.timer.Stop()
			defer b.timer.Stop()
			r.Body = b
			// The stages that read the body whole reserve its memory on
			// this request's account, given back when the request ends.
			ctx, release := bodymem.With(context.WithValue(r.Context(), slowBodyKey{}, b), s.bodies, lim.Memory)
			defer release()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

type slowBodyKey struct{}

// The limits a read can run into; the timer enforces the nearest.
const (
	limitIdle = iota
	limitWhole
	limitRate
)

// slowBody fails a read that runs into one of its limits. The timer marks
// the body cut off (cause) before it forces the pending read to fail, so
// that whoever sees the failure (the server cancels the request when a
// body read fails) can tell why.
type slowBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	lim      BodyLimits
	deadline time.Time
	timer    *time.Timer
	pending  atomic.Int32 // the limit the armed timer enforces
	cause    atomic.Pointer[obs.BodyTimeoutError]

	// Only Read touches these (one read at a time): the waiting and the
	// bytes of the current rate window.
	waited time.Duration
	got    int64
}

func (b *slowBody) Read(p []byte) (int, error) {
	if e := b.cause.Load(); e != nil {
		return 0, e
	}
	start := time.Now()
	limit, which := b.lim.Idle, limitIdle
	if d := b.deadline.Sub(start); d < limit {
		limit, which = d, limitWhole
	}
	if b.lim.MinRate > 0 {
		// This window is short of bytes until its end; one that has its
		// bytes already is followed by one that has none yet.
		d := b.lim.Window - b.waited
		if b.got >= b.need() {
			d += b.lim.Window
		}
		if d < limit {
			limit, which = d, limitRate
		}
	}
	if limit <= 0 {
		return 0, b.cut(which)
	}
	b.pending.Store(int32(which))
	b.timer.Reset(limit)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	if e := b.cause.Load(); e != nil {
		return 0, e
	}
	// A body that keeps coming fast is an upload, not a trickle: each
	// 64 KiB it brings moves the whole-body deadline a second on (Apache's
	// mod_reqtimeout extends its body timeout the same way).
	b.deadline = b.deadline.Add(time.Duration(int64(n) * int64(time.Second) / bodyDeadlineStep))
	if b.lim.MinRate > 0 {
		b.waited += time.Since(start)
		if b.waited < b.lim.Window {
			b.got += int64(n)
		} else {
			if b.got+int64(n) < b.need() && err == nil {
				return 0, b.cut(limitRate)
			}
			b.waited, b.got = 0, 0
		}
	}
	return n, err
}

// bodyDeadlineStep is how many bytes of body move the whole-body deadline
// (timeouts.body) a second on.
const bodyDeadlineStep = 64 << 10

// need is what one rate window must bring.
func (b *slowBody) need() int64 { return b.lim.MinRate * int64(b.lim.Window) / int64(time.Second) }

func (b *slowBody) expire() {
	b.cut(int(b.pending.Load()))
	b.rc.SetReadDeadline(time.Now()) // the pending read fails now
}

// cut marks the body cut off by the limit which, and returns why.
func (b *slowBody) cut(which int) error {
	e := &obs.BodyTimeoutError{Key: "timeouts.body_idle", Detail: fmt.Sprintf("the request body sent nothing for %s", b.lim.Idle)}
	switch which {
	case limitWhole:
		e = &obs.BodyTimeoutError{Key: "timeouts.body", Detail: fmt.Sprintf("the request body did not arrive whole within %s (and a second more for every 64 KiB it sent)", b.lim.Whole)}
	case limitRate:
		e = &obs.BodyTimeoutError{Key: "limits.body_min_rate", Detail: fmt.Sprintf("the request body sent less than %d bytes a second over %s", b.lim.MinRate, b.lim.Window)}
	}
	b.cause.CompareAndSwap(nil, e)
	return b.cause.Load()
}

// bodyTimedOut reports whether r's body was cut off by SlowBody.
func bodyTimedOut(r *http.Request) bool {
	b, ok := r.Context().Value(slowBodyKey{}).(*slowBody)
	return ok && b.cause.Load() != nil
}

// maxBufferedBody is the largest request body BufferBody reads whole;
// orders and API calls are far smaller, uploads stream.
const maxBufferedBody = 1 << 20

// BufferBody is the stage before the budget: a request body of up to
// maxBufferedBody is read whole before anything is spent on it. A client
// that sends slowly then holds neither budget (while a budget waits for
// the upstream's first count, its probe holds every other client of it)
// nor an upstream connection. A larger body streams, and so does one
// that would take the bodies read whole together past
// limits.buffered_bodies (see [bodymem]): their memory never grows past it.
func (s *Server) BufferBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength > maxBufferedBody || r.Header.Get("Upgrade") != "" {
			next.ServeHTTP(w, r)
			return
		}
		orig := r.Body
		buf, whole, err := bodymem.ReadAll(r.Context(), orig, r.ContentLength, maxBufferedBody)
		if err != nil && !errors.Is(err, bodymem.ErrFull) {
			answerBodyError(w, r, err)
			return
		}
		switch {
		case !whole: // larger than maxBufferedBody, or no memory left for it
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
