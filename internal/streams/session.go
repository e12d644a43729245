package streams

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"sluice/internal/decision"
)

// session is one client's WebSocket: its subscriptions, answered by
// sluice, and the bounded queue of what waits to be sent to it.
type session struct {
	h        *Hub
	ws       *websocket.Conn
	conn     *corkConn // under ws
	ctx      context.Context
	cancel   context.CancelCauseFunc
	combined atomic.Bool

	mu     sync.Mutex
	queue  []queued
	queued int64 // bytes in queue
	wake   chan struct{}
	// spare is the writer's last batch, emptied: the queue's next backing
	// array, so that a busy stream does not allocate one per burst.
	spare []queued

	// The client's subscriptions as its messages so far make them, in
	// order (LIST_SUBSCRIPTIONS): read and written only by the reading
	// goroutine.
	names   []string
	maxSubs int
	// joined are the streams the session is in: only the goroutine that
	// carries out the actions touches it.
	joined map[string]*stream

	msgsIn, msgsOut   atomic.Int64
	bytesIn, bytesOut atomic.Int64
}

// queued is a message waiting to be sent, with when its event came from
// the exchange (zero for sluice's answers and replays).
type queued struct {
	b  []byte
	at time.Time
}

// errSlow ends a client that let its send queue fill up.
var errSlow = errors.New("client too slow")

// clientReadLimit bounds a client's message: a subscribe request naming
// a thousand streams fits.
const clientReadLimit = 64 << 10

// send queues ev for the client in its framing; a client whose queue is
// over the limit is closed.
func (ss *session) send(name string, ev event) {
	b := ev.raw
	if ss.combined.Load() {
		b = ev.combined
	}
	ss.enqueue(queued{b: b, at: ev.at})
}

// push queues an answer of sluice's own.
func (ss *session) push(b []byte) { ss.enqueue(queued{b: b}) }

func (ss *session) enqueue(q queued) {
	b := q.b
	ss.mu.Lock()
	if ss.ctx.Err() != nil {
		ss.mu.Unlock()
		return
	}
	if ss.queued+int64(len(b)) > ss.h.spec.clientQueue {
		ss.mu.Unlock()
		ss.cancel(fmt.Errorf("%w: over %d bytes waiting to be sent (streams.client_queue)", errSlow, ss.h.spec.clientQueue))
		return
	}
	ss.queue = append(ss.queue, q)
	ss.queued += int64(len(b))
	ss.mu.Unlock()
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// maxSpare bounds the batch a session keeps for its next queue.
const maxSpare = 1024

func (ss *session) write() {
	for {
		select {
		case <-ss.ctx.Done():
			return
		case <-ss.wake:
		}
		ss.mu.Lock()
		batch := ss.queue
		ss.queue, ss.spare = ss.spare, nil
		ss.mu.Unlock()
		ss.conn.cork()
		for _, q := range batch {
			b := q.b
			// No context per write: its timer would be the session's main
			// garbage. A client that stops reading fills its queue and is
			// cancelled, and closing the connection ends a blocked write.
			err := ss.ws.Write(context.Background(), websocket.MessageText, b)
			if err != nil {
				ss.cancel(fmt.Errorf("writing to the client: %w", err))
				return
			}
			ss.msgsOut.Add(1)
			ss.bytesOut.Add(int64(len(b)))
			ss.mu.Lock()
			ss.queued -= int64(len(b))
			ss.mu.Unlock()
		}
		if err := ss.conn.uncork(); err != nil {
			ss.cancel(fmt.Errorf("writing to the client: %w", err))
			return
		}
		sent := time.Now()
		for _, q := range batch {
			if !q.at.IsZero() {
				ss.h.delay.Observe(sent.Sub(q.at).Seconds())
			}
		}
		clear(batch) // its events' bytes may go
		ss.mu.Lock()
		if ss.spare == nil && cap(batch) <= maxSpare {
			ss.spare = batch[:0]
		}
		ss.mu.Unlock()
	}
}

// serve runs a client's session until it ends, and sums it up in rec.
func (hs *Hubs) serve(w http.ResponseWriter, r *http.Request, rec *decision.Record, h *Hub, initial []string, combined bool) {
	cw := &corkingWriter{ResponseWriter: w}
	ws, err := websocket.Accept(cw, r, &websocket.AcceptOptions{
		// Bots are not browsers: the exchange takes any Origin, and so
		// does sluice (the policy and client identity already ran).
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		rec.Reason, rec.Err = "websocket handshake failed", err
		return // Accept has answered
	}
	rec.Status = http.StatusSwitchingProtocols
	ws.SetReadLimit(clientReadLimit)
	ss := &session{h: h, ws: ws, conn: cw.conn, wake: make(chan struct{}, 1), joined: map[string]*stream{}, maxSubs: h.spec.perConn}
	ss.ctx, ss.cancel = context.WithCancelCause(hs.ctx)
	ss.combined.Store(combined)
	summary := &decision.StreamSession{Shared: true}
	rec.Stream = summary
	h.sessions.Add(1)
	hs.metrics.clients.WithLabelValues(h.host, "shared").Inc()
	defer func() {
		h.sessions.Add(-1)
		hs.metrics.clients.WithLabelValues(h.host, "shared").Dec()
	}()

	for _, name := range initial {
		if !slices.Contains(ss.names, name) {
			ss.names = append(ss.names, name)
			s := h.want(name)
			s.join(ss)
			ss.joined[name] = s
		}
	}
	summary.Subscriptions = len(ss.names)
	actions := make(chan action, 64)
	acted := make(chan struct{})
	go ss.write()
	go func() { ss.act(actions); close(acted) }()
	readErr := ss.read(summary, actions)
	close(actions)
	cause := context.Cause(ss.ctx)
	ss.cancel(readErr)
	<-acted
	summary.MessagesIn, summary.MessagesOut = ss.msgsIn.Load(), ss.msgsOut.Load()
	rec.BytesIn, rec.BytesOut = ss.bytesIn.Load(), ss.bytesOut.Load()
	switch {
	case errors.Is(cause, errSlow):
		summary.Close = "sluice: " + cause.Error()
		hs.metrics.dropped.WithLabelValues(h.host, "slow").Inc()
		rec.Reason, rec.Err = "client too slow", cause
		// The close frame waits behind what the client did not read: it
		// goes out if the client wakes up, bounded by the library's own
		// close timeouts, while the session's line is written now.
		go ws.Close(websocket.StatusTryAgainLater, "sluice: client too slow, its send queue is full")
	case hs.ctx.Err() != nil:
		summary.Close = "sluice: shutting down"
		ws.Close(websocket.StatusGoingAway, "sluice: shutting down")
	case websocket.CloseStatus(readErr) != -1:
		summary.Close = fmt.Sprintf("client: %d", websocket.CloseStatus(readErr))
	case cause != nil && !errors.Is(cause, readErr):
		summary.Close = "sluice: " + cause.Error()
		ws.CloseNow()
	default:
		summary.Close = "client: " + readErr.Error()
		ws.CloseNow()
	}
}

// action is what one client message does to the session's streams and
// what it answers, carried out in the order the messages came.
type action struct {
	join     []*stream // wanted now, joined once live, after the answer
	leave    []string
	combined *bool
	answer   []byte
	get      bool    // GET_PROPERTY combined: answered from the state in its turn
	rq       request // the GET_PROPERTY
}

// read reads the client's messages until it leaves. Each becomes an
// action at once, so that a new stream's upstream subscription is asked
// for now and batched with other clients'; the answers wait in order.
func (ss *session) read(summary *decision.StreamSession, actions chan<- action) error {
	proto := ss.h.spec.proto
	for {
		_, msg, err := ss.ws.Read(ss.ctx)
		if err != nil {
			return err
		}
		ss.msgsIn.Add(1)
		ss.bytesIn.Add(int64(len(msg)))
		rq := proto.Parse(msg)
		a := action{answer: rq.answer}
		switch {
		case rq.answer != nil:
		case rq.op == opSubscribe:
			var fresh []string
			for _, name := range rq.names {
				if !slices.Contains(ss.names, name) && !slices.Contains(fresh, name) {
					fresh = append(fresh, name)
				}
			}
			if len(ss.names)+len(fresh) > ss.maxSubs {
				a.answer = proto.Refuse(rq, fmt.Sprintf("too many streams; a connection can listen to at most %d", ss.maxSubs))
				break
			}
			ss.names = append(ss.names, fresh...)
			for _, name := range fresh {
				a.join = append(a.join, ss.h.want(name))
			}
			a.answer = proto.Answer(rq, "null")
			summary.Subscriptions = max(summary.Subscriptions, len(ss.names))
		case rq.op == opUnsubscribe:
			ss.names = slices.DeleteFunc(ss.names, func(n string) bool { return slices.Contains(rq.names, n) })
			a.leave, a.answer = rq.names, proto.Answer(rq, "null")
		case rq.op == opList:
			rq.names = slices.Clone(ss.names)
			a.answer = proto.Answer(rq, "")
		case rq.op == opSetCombined:
			a.combined, a.answer = &rq.value, proto.Answer(rq, "null")
		case rq.op == opGetCombined:
			// Answered in its turn, after the SET_PROPERTYs before it.
			a.get, a.rq = true, rq
		}
		select {
		case actions <- a:
		case <-ss.ctx.Done():
			for _, s := range a.join {
				ss.h.abandon(s)
			}
			return context.Cause(ss.ctx)
		}
	}
}

// liveWait bounds how long a subscribe answer waits for the exchange to
// confirm a new stream; past it the client is answered anyway, and gets
// the stream's events when they come.
const liveWait = 10 * time.Second

// act carries out the actions in order. A subscription is answered the
// way the exchange answers it: once every stream it adds is in force
// upstream (so that a depth snapshot the client takes next is never older
// than the first event it gets), then come the replayed diffs and the
// events. When the session ends, it leaves every stream.
func (ss *session) act(actions <-chan action) {
	h := ss.h
	for a := range actions {
		if ss.ctx.Err() != nil {
			for _, s := range a.join {
				h.abandon(s)
			}
			continue
		}
		ss.awaitLive(a.join)
		if a.combined != nil {
			ss.combined.Store(*a.combined)
		}
		for _, name := range a.leave {
			if s := ss.joined[name]; s != nil {
				delete(ss.joined, name)
				h.unsubscribe(ss, s)
			}
		}
		switch {
		case a.get:
			ss.push(h.spec.proto.Answer(a.rq, fmt.Sprint(ss.combined.Load())))
		case a.answer != nil:
			ss.push(a.answer)
		}
		for _, s := range a.join {
			s.join(ss)
			ss.joined[s.name] = s
		}
	}
	for _, s := range ss.joined {
		h.unsubscribe(ss, s)
	}
}

// awaitLive waits until each of streams is live, liveWait at most, or the
// session ends.
func (ss *session) awaitLive(streams []*stream) {
	if len(streams) == 0 {
		return
	}
	deadline := time.NewTimer(liveWait)
	defer deadline.Stop()
	for _, s := range streams {
		select {
		case <-s.live:
		case <-deadline.C:
			return
		case <-ss.ctx.Done():
			return
		}
	}
}

func idOrNull(id []byte) []byte {
	if len(id) == 0 {
		return []byte("null")
	}
	return id
}
