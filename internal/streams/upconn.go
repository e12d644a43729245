package streams

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"sluice/internal/throttle"
)

// upConn is one of sluice's upstream connections: the streams it carries
// and its replacement when it nears the end of its life. It is one
// WebSocket (a leg), or two with streams.standby, which carry the same
// streams so that either can drop without notice and lose nothing.
type upConn struct {
	h    *Hub
	id   int64
	legs []*leg

	// Guarded by the hub's mu.
	names    map[string]struct{}
	retiring bool // replaced: carries its streams until the replacement has them
	closed   bool

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when every leg's run returns
}

// leg is one WebSocket of an upConn: the subscribe and unsubscribe
// requests waiting to be sent on it (paced under the exchange's message
// limit) and those not answered yet.
type leg struct {
	c *upConn
	n int // its index in c.legs

	// Guarded by the hub's mu.
	ops  []upOp
	sent map[int64][]string // subscribe requests not answered yet, by id

	up       atomic.Bool  // connected
	lastRead atomic.Int64 // when the connection last brought a message (Unix ns)
	wake     chan struct{}
}

type upOp struct {
	name  string
	unsub bool
}

var connIDs atomic.Int64

// maxBatch is the most streams one subscribe request names, where the
// exchange sets no lower bound.
const maxBatch = 200

func (h *Hub) openLocked() *upConn {
	c := &upConn{h: h, id: connIDs.Add(1), names: map[string]struct{}{}, done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancelCause(h.hubs.ctx)
	for n := range h.spec.legs {
		c.legs = append(c.legs, &leg{c: c, n: n, sent: map[int64][]string{}, wake: make(chan struct{}, 1)})
	}
	h.conns[c] = struct{}{}
	var running sync.WaitGroup
	for _, l := range c.legs {
		running.Go(l.run)
	}
	go func() {
		running.Wait()
		close(c.done)
	}()
	return c
}

// closeLocked ends c; its streams are elsewhere or gone.
func (h *Hub) closeLocked(c *upConn, why string) {
	if c.closed {
		return
	}
	c.closed = true
	delete(h.conns, c)
	c.cancel(errors.New(why))
}

func (c *upConn) queueLocked(name string, unsub bool) {
	for _, l := range c.legs {
		l.ops = append(l.ops, upOp{name: name, unsub: unsub})
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// other is c's other leg with a standby (nil without).
func (l *leg) other() *leg {
	if len(l.c.legs) < 2 {
		return nil
	}
	return l.c.legs[1-l.n]
}

// take returns the next request to send: consecutive operations of one
// kind, up to maxBatch streams, and its id.
func (l *leg) take() (names []string, unsub bool, id int64) {
	h := l.c.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(l.ops) == 0 {
		return nil, false, 0
	}
	unsub = l.ops[0].unsub
	i := 0
	for ; i < len(l.ops) && i < h.spec.proto.Batch() && l.ops[i].unsub == unsub; i++ {
		names = append(names, l.ops[i].name)
	}
	l.ops = l.ops[i:]
	id = h.nextID.Add(1)
	if !unsub {
		l.sent[id] = names
	}
	return names, unsub, id
}

// run keeps l connected until its upConn is closed: after a connection
// drops, it dials again (within the connection budget, backing off) and
// subscribes every stream the upConn carries.
func (l *leg) run() {
	c := l.c
	h := c.h
	backoff := time.Second
	for c.ctx.Err() == nil {
		ws, wait, err := l.connect()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			wait = max(wait, backoff)
			backoff = min(2*backoff, time.Minute)
			h.hubs.metrics.upstreamOpened.WithLabelValues(h.host, "failed").Inc()
			h.log.Warn("upstream stream connection failed", "conn", c.id, "leg", l.n, "error", err, "retry_in", wait.String())
			select {
			case <-time.After(wait):
			case <-c.ctx.Done():
			}
			continue
		}
		backoff = time.Second
		h.hubs.metrics.upstreamOpened.WithLabelValues(h.host, "ok").Inc()
		h.mu.Lock()
		l.ops = l.ops[:0]
		clear(l.sent)
		for _, name := range slices.Sorted(maps.Keys(c.names)) {
			l.ops = append(l.ops, upOp{name: name})
		}
		retiring := c.retiring
		h.mu.Unlock()
		if retiring {
			ws.CloseNow()
			return
		}
		h.hubs.metrics.upstreamConns.WithLabelValues(h.host).Inc()
		l.up.Store(true)
		err = l.serve(ws)
		l.up.Store(false)
		h.hubs.metrics.upstreamConns.WithLabelValues(h.host).Dec()
		if c.ctx.Err() != nil {
			return
		}
		h.mu.Lock()
		retiring = c.retiring
		h.mu.Unlock()
		if retiring {
			return // the replacement has its streams
		}
		cause := "dropped"
		if errors.Is(err, errSilent) {
			cause = "silent"
		}
		h.hubs.metrics.lost.WithLabelValues(h.host, cause).Inc()
		if o := l.other(); o != nil {
			h.mu.RLock()
			streams := h.streamsLocked(maps.Keys(c.names))
			h.mu.RUnlock()
			for _, s := range streams {
				s.legDown(l)
			}
			h.log.Warn("upstream stream connection lost; its standby carries the streams while it reconnects", "conn", c.id, "leg", l.n, "standby_up", o.up.Load(), "error", err)
			continue
		}
		h.log.Warn("upstream stream connection lost; reconnecting", "conn", c.id, "error", err)
	}
}

// errSilent ends an upstream connection that brought nothing for
// streams.silence and then left a ping unanswered.
var errSilent = errors.New("upstream silent")

// streamsLocked are the hub's streams of names that it still has; the
// caller holds h.mu and calls into them after letting it go.
func (h *Hub) streamsLocked(names iter.Seq[string]) []*stream {
	var streams []*stream
	for name := range names {
		if s := h.streams[name]; s != nil {
			streams = append(streams, s)
		}
	}
	return streams
}

// connect dials the upstream once the connection budget has room. wait is
// how long the exchange asked sluice to wait when it refused.
func (l *leg) connect() (*websocket.Conn, time.Duration, error) {
	c := l.c
	h := c.h
	req, err := http.NewRequestWithContext(c.ctx, http.MethodGet, "https://"+h.host+h.spec.proto.UpstreamPath(h.ns), nil)
	if err != nil {
		return nil, 0, err
	}
	lease, err := h.hubs.limit.Acquire(c.ctx, h.spec.budget, h.host, req)
	if err != nil {
		return nil, 0, fmt.Errorf("connection budget %s: %w", h.spec.budget.Name(), err)
	}
	lease.Release()
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	ws, resp, err := h.dial(ctx, h.spec.proto.UpstreamPath(h.ns))
	if err != nil {
		var wait time.Duration
		if resp != nil {
			wait, _ = throttle.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, wait, err
	}
	ws.SetReadLimit(32 << 20)
	return ws, 0, nil
}

// serve runs one upstream connection until it ends: its events go to
// their streams, its requests go out paced.
func (l *leg) serve(ws *websocket.Conn) error {
	c := l.c
	h := c.h
	readErr := make(chan error, 1)
	go func() { readErr <- l.read(ws) }()
	life := time.NewTimer(h.spec.lifetime - min(h.spec.lifetime/10, 5*time.Minute))
	defer life.Stop()
	pace := time.NewTimer(0)
	defer pace.Stop()
	l.lastRead.Store(time.Now().UnixNano())
	quiet := time.NewTicker(h.spec.silence / 4)
	defer quiet.Stop()
	var pings <-chan time.Time
	if h.spec.ping > 0 && h.spec.proto.Ping() != nil {
		t := time.NewTicker(h.spec.ping)
		defer t.Stop()
		pings = t.C
	}
	paced := true // the pace timer has fired: a request may go
	for {
		var wake <-chan struct{}
		if paced {
			wake = l.wake
		}
		select {
		case err := <-readErr:
			ws.CloseNow()
			return err
		case <-c.ctx.Done():
			ws.Close(websocket.StatusNormalClosure, "")
			<-readErr
			return c.ctx.Err()
		case <-life.C:
			go h.roll(c, "lifetime")
		case <-pings:
			wctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
			err := ws.Write(wctx, websocket.MessageText, h.spec.proto.Ping())
			cancel()
			if err != nil {
				ws.CloseNow()
				<-readErr
				return fmt.Errorf("sending a ping: %w", err)
			}
		case <-quiet.C:
			// A connection can die without a close or a reset (a lost
			// route, a stuck peer): one that brought nothing for a while
			// must answer a ping.
			if time.Since(time.Unix(0, l.lastRead.Load())) < h.spec.silence {
				continue
			}
			pctx, cancel := context.WithTimeout(c.ctx, h.spec.silence)
			err := ws.Ping(pctx)
			cancel()
			if err != nil {
				ws.CloseNow()
				<-readErr
				return fmt.Errorf("%w for %v: no answer to a ping: %w", errSilent, time.Since(time.Unix(0, l.lastRead.Load())).Round(time.Second), err)
			}
			l.lastRead.Store(time.Now().UnixNano())
		case <-pace.C:
			paced = true
			select {
			case l.wake <- struct{}{}: // look again for requests left waiting
			default:
			}
		case <-wake:
			names, unsub, id := l.take()
			if len(names) == 0 {
				continue
			}
			wctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
			err := ws.Write(wctx, websocket.MessageText, h.spec.proto.Subscribe(names, unsub, id))
			cancel()
			if err != nil {
				ws.CloseNow()
				<-readErr
				return fmt.Errorf("sending a subscribe request: %w", err)
			}
			paced = false
			pace.Reset(h.spec.msgInterval)
		}
	}
}

// maxScratch bounds the buffer an upstream reader keeps between messages.
const maxScratch = 1 << 20

// read delivers the events l brings until its connection ends. Pings are answered
// by the WebSocket library as they are read.
func (l *leg) read(ws *websocket.Conn) error {
	c := l.c
	h := c.h
	// Each message is read into scratch and copied out at its size: its
	// bytes stay queued for clients, and reading them whole grows a new
	// buffer by doubling, two or three times the message.
	var scratch bytes.Buffer
	for {
		_, r, err := ws.Reader(c.ctx)
		if err != nil {
			return err
		}
		scratch.Reset()
		if _, err := scratch.ReadFrom(r); err != nil {
			return err
		}
		msg := bytes.Clone(scratch.Bytes())
		if scratch.Cap() > maxScratch {
			scratch = bytes.Buffer{}
		}
		now := time.Now()
		l.lastRead.Store(now.UnixNano())
		h.upstreamMessages.Inc()
		m := h.spec.proto.Upstream(msg)
		switch m.kind {
		case upstreamEvent:
			h.mu.RLock()
			s := h.streams[m.stream]
			h.mu.RUnlock()
			if s != nil {
				m.ev.at = now
				if book := h.hubs.Prices; book != nil && book.Wanted() {
					if sym, p, ok := eventPrice(h.spec.proto.Name(), m.stream, m.ev.raw); ok {
						book.Set(h.spec.proto.Name(), sym, p, now)
					}
				}
				s.deliver(l, m.ev)
			}
		case upstreamAnswer:
			l.answered(m.id)
		case upstreamShutdown:
			go h.roll(c, m.detail)
		case upstreamError:
			l.answered(m.id)
			h.log.Warn("upstream refused a stream request", "conn", c.id, "request", m.id, "error", m.detail)
		case upstreamUnknown:
			h.log.Debug("upstream stream message not understood", "conn", c.id, "detail", m.detail)
		}
	}
}

// answered marks the streams of sluice's subscribe request id live: the
// exchange answers once a subscription is in force.
func (l *leg) answered(id int64) {
	h := l.c.h
	h.mu.Lock()
	streams := h.streamsLocked(slices.Values(l.sent[id]))
	delete(l.sent, id)
	h.mu.Unlock()
	for _, s := range streams {
		s.markLive()
	}
}

// rollGrace bounds how long a replaced connection keeps delivering while
// its replacement catches up.
const rollGrace = 30 * time.Second

// roll replaces c: a new connection subscribes c's streams, each stream
// switches over when the new one continues exactly where c is, and then
// c closes.
func (h *Hub) roll(c *upConn, cause string) {
	h.mu.Lock()
	if c.retiring || c.closed {
		h.mu.Unlock()
		return
	}
	c.retiring = true
	var streams []*stream
	if len(c.names) > 0 {
		n := h.openLocked()
		for name := range c.names {
			s := h.streams[name]
			n.names[name] = struct{}{}
			s.on = n
			s.rollTo(n)
			n.queueLocked(name, false)
			streams = append(streams, s)
		}
		c.names = map[string]struct{}{}
	}
	h.mu.Unlock()
	h.hubs.metrics.rollovers.WithLabelValues(h.host, cause).Inc()
	h.log.Info("replacing upstream stream connection", "conn", c.id, "cause", cause, "streams", len(streams))
	go h.retire(c, streams)
}

// retire closes c once none of streams is delivered by it any more, or
// after rollGrace, or when c ends by itself.
func (h *Hub) retire(c *upConn, streams []*stream) {
	deadline := time.NewTimer(rollGrace)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-deadline.C:
			break wait
		case <-c.done:
			break wait
		case <-tick.C:
			if !slices.ContainsFunc(streams, func(s *stream) bool { return s.owned(c) }) {
				break wait
			}
		}
	}
	for _, s := range streams {
		s.release(c)
	}
	h.mu.Lock()
	h.closeLocked(c, "replaced")
	h.mu.Unlock()
}
