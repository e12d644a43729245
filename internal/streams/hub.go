// Package streams shares exchanges' public WebSocket market streams: every
// distinct stream is subscribed once upstream, on as few connections as
// the exchange allows, and fanned out to every client that wants it, each
// in the framing it asked for. sluice answers the clients' subscribe, list
// and ping messages itself, keeps to the exchange's connection and message
// limits, replaces upstream connections before the exchange closes them
// without a gap or a duplicate, and closes a client that does not read
// rather than let it hold anyone else up.
package streams

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/config"
	"sluice/internal/throttle"
)

// Spec is one host's compiled stream settings.
type Spec struct {
	proto       protocol
	ping        time.Duration // how often sluice pings its upstream connections (0: never)
	perConn     int
	msgInterval time.Duration // between two JSON messages on one upstream connection
	lifetime    time.Duration
	replay      time.Duration
	linger      time.Duration
	clientQueue int64
	legs        int            // WebSockets per upstream connection: 2 with a standby
	silence     time.Duration  // an upstream connection this quiet is pinged
	budget      *throttle.Spec // new upstream connections
}

// Compile builds a host's stream settings from its profile's and its
// entry's; nil (no error) when the host has no shared streams.
func Compile(p *config.StreamsProfile, h *config.HostStreams) (*Spec, error) {
	if p == nil || h != nil && h.Off {
		return nil, nil
	}
	var proto protocol = binance{}
	if p.Protocol == config.StreamsBybit {
		proto = bybit{}
	}
	s := &Spec{
		proto:    proto,
		ping:     p.Ping.D(),
		perConn:  p.StreamsPerConnection,
		lifetime: p.Lifetime.D(),
		replay:   p.Replay.D(),
		linger:   10 * time.Second,
		// Pongs count against the exchange's limit too: one message a
		// second is left for them.
		msgInterval: time.Second / time.Duration(p.MessagesPerSecond-1),
		clientQueue: 4 << 20,
		legs:        1,
		silence:     30 * time.Second,
	}
	if h != nil {
		if h.Standby {
			s.legs = 2
		}
		if h.Silence > 0 {
			s.silence = h.Silence.D()
		}
		if h.Lifetime > 0 {
			s.lifetime = h.Lifetime.D()
		}
		if h.Linger > 0 {
			s.linger = h.Linger.D()
		}
		if h.ClientQueue > 0 {
			s.clientQueue = int64(h.ClientQueue)
		}
	}
	conns := p.Connections
	if h != nil && h.Connections != nil {
		if h.Connections.Limit <= 0 || h.Connections.Window <= 0 {
			return nil, config.Under(errors.New("limit and window must be positive"), "connections")
		}
		conns = *h.Connections
	}
	wait := config.Duration(conns.Window.D())
	budget, err := throttle.Compile(&config.Throttle{Budget: p.Protocol + "-stream-connections", Model: "window",
		Limit: float64(conns.Limit), Window: conns.Window, MaxWait: &wait}, "", 0)
	if err != nil {
		return nil, err
	}
	s.budget = budget
	return s, nil
}

// Budgets is the connection budget, for the throttle's metrics.
func (s *Spec) Budgets() throttle.Specs { return throttle.Specs{s.budget} }

// PriceBook keeps the prices the streams show. Wanted is asked per event,
// before the event is read for its price.
type PriceBook interface {
	Wanted() bool
	Set(exchange, symbol string, price float64, at time.Time)
}

// Dialer opens a WebSocket to a hub's upstream at path, through sluice's
// verified, pinned transport.
type Dialer func(ctx context.Context, path string) (*websocket.Conn, *http.Response, error)

// Hubs holds a hub per host and market, for the life of the process: a
// reload keeps every shared stream and its clients.
type Hubs struct {
	// Prices (nil: none) get each price a price-carrying stream's event
	// shows, by exchange and symbol, while they want them: the guardrails
	// value orders with them.
	Prices PriceBook

	log     *slog.Logger
	metrics *Metrics
	limit   *throttle.Limiter
	ctx     context.Context
	mu      sync.Mutex
	hubs    map[string]*Hub
}

// NewHubs returns the process's hubs; ctx ends them all.
func NewHubs(ctx context.Context, log *slog.Logger, m *Metrics, limit *throttle.Limiter) *Hubs {
	return &Hubs{log: log, metrics: m, limit: limit, ctx: ctx, hubs: map[string]*Hub{}}
}

// hub returns the hub of host's market ns, made with spec and dial if new.
// A hub made under an older config keeps its settings until its last
// stream is gone.
func (hs *Hubs) hub(host, ns string, spec *Spec, dial Dialer) *Hub {
	key := host + ns
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if h, ok := hs.hubs[key]; ok && h.spec == spec {
		return h
	} else if ok && !h.idle() {
		return h
	}
	h := &Hub{hubs: hs, host: host, ns: ns, spec: spec, dial: dial, log: hs.log.With("component", "streams", "host", host+ns),
		fanout: hs.metrics.fanout.WithLabelValues(host), upstreamMessages: hs.metrics.upstreamMessages.WithLabelValues(host),
		delay: hs.metrics.delay.WithLabelValues(host), streams: map[string]*stream{}, conns: map[*upConn]struct{}{}}
	hs.hubs[key] = h
	return h
}

// Status lists every hub's streams, for the admin API.
func (hs *Hubs) Status() []HubStatus {
	hs.mu.Lock()
	hubs := make([]*Hub, 0, len(hs.hubs))
	for _, h := range hs.hubs {
		hubs = append(hubs, h)
	}
	hs.mu.Unlock()
	out := make([]HubStatus, 0, len(hubs))
	for _, h := range hubs {
		out = append(out, h.status())
	}
	slices.SortFunc(out, func(a, b HubStatus) int { return strings.Compare(a.Host, b.Host) })
	return out
}

// Hub shares the streams of one host's market.
type Hub struct {
	hubs *Hubs
	host string
	ns   string
	spec *Spec
	dial Dialer
	log  *slog.Logger

	nextID   atomic.Int64 // ids of sluice's own upstream requests
	sessions atomic.Int64
	// The series counted per event, looked up once.
	fanout, upstreamMessages prometheus.Counter
	delay                    prometheus.Observer

	mu      sync.RWMutex
	streams map[string]*stream
	conns   map[*upConn]struct{}
}

func (h *Hub) idle() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.streams) == 0 && h.sessions.Load() == 0
}

// want returns the stream name, subscribed upstream (or on its way), held
// for a client that will join it or abandon it.
func (h *Hub) want(name string) *stream {
	h.mu.Lock()
	s, ok := h.streams[name]
	if !ok {
		s = &stream{name: name, hub: h, state: h.spec.proto.State(name, h.spec), subs: map[*session]struct{}{}, live: make(chan struct{})}
		h.streams[name] = s
		h.assignLocked(s)
		h.hubs.metrics.subscriptions.WithLabelValues(h.host).Inc()
	}
	s.mu.Lock()
	s.waiting++
	s.mu.Unlock()
	h.mu.Unlock()
	return s
}

// abandon lets go of a stream wanted but never joined.
func (h *Hub) abandon(s *stream) {
	s.mu.Lock()
	s.waiting--
	n := len(s.subs) + s.waiting
	s.mu.Unlock()
	h.lingerIfUnwanted(s, n)
}

// lingerIfUnwanted drops s, left with n clients, after the linger unless
// someone comes back for it.
func (h *Hub) lingerIfUnwanted(s *stream, n int) {
	if n == 0 {
		time.AfterFunc(h.spec.linger, func() { h.drop(s) })
	}
}

// assignLocked puts s on an upstream connection with room, or a new one.
func (h *Hub) assignLocked(s *stream) {
	var on *upConn
	for c := range h.conns {
		if !c.retiring && len(c.names) < h.spec.perConn {
			on = c
			break
		}
	}
	if on == nil {
		on = h.openLocked()
	}
	on.names[s.name] = struct{}{}
	s.on = on
	on.queueLocked(s.name, false)
}

// unsubscribe removes ss from s; a stream nobody wants is unsubscribed
// upstream after the linger, unless someone comes back for it.
func (h *Hub) unsubscribe(ss *session, s *stream) { h.lingerIfUnwanted(s, s.leave(ss)) }

func (h *Hub) drop(s *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streams[s.name] != s || s.count() > 0 {
		return
	}
	delete(h.streams, s.name)
	h.hubs.metrics.subscriptions.WithLabelValues(h.host).Dec()
	c := s.on
	delete(c.names, s.name)
	if len(c.names) == 0 {
		h.closeLocked(c, "no streams left")
		return
	}
	c.queueLocked(s.name, true)
}

// stream is one upstream stream and the clients that want it.
type stream struct {
	name string
	hub  *Hub

	// on is the upstream connection the stream is subscribed on (guarded
	// by the hub's mu).
	on *upConn

	// live is closed once the exchange has answered the subscription (or
	// sent an event): from then on a client's snapshot is never older
	// than the events it gets.
	live     chan struct{}
	liveOnce sync.Once

	mu      sync.Mutex
	subs    map[*session]struct{}
	waiting int // clients that want the stream and will join it
	// owner is the connection whose events are delivered; next, during a
	// rollover, its replacement, whose events wait in pending until they
	// continue where the owner's left off.
	owner   *upConn
	next    *upConn
	pending []event
	last    event
	// merges holds, per upstream connection with a standby, where its two
	// legs stand in s.
	merges map[*upConn]*legMerge
	// state is what a late joiner gets first (nil: nothing).
	state streamState
}

func (s *stream) join(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != nil {
		for _, ev := range s.state.Catchup() { // not live: at is zero
			ss.send(s.name, ev)
		}
	}
	s.waiting--
	s.subs[ss] = struct{}{}
}

func (s *stream) markLive() { s.liveOnce.Do(func() { close(s.live) }) }

func (s *stream) leave(ss *session) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.subs, ss)
	return len(s.subs) + s.waiting
}

func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs) + s.waiting
}

// deliver takes an event of s from leg l of an upstream connection.
func (s *stream) deliver(l *leg, ev event) {
	s.markLive()
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.other() != nil {
		s.merge(l, ev)
		return
	}
	s.take(l.c, ev)
}

// take handles an event of s from upstream connection c: its owner's are
// published, its replacement's held until they continue the owner's.
func (s *stream) take(c *upConn, ev event) {
	switch {
	case s.owner == nil:
		s.owner = c
	case s.owner == c:
	case s.next == c:
		// A replacement's event: held until it continues the owner's.
		s.pending = append(s.pending, ev)
		s.trySwitch()
		return
	default:
		return // a connection the stream has left
	}
	s.publish(ev)
	if len(s.pending) > 0 {
		s.trySwitch()
	}
}

// rollTo makes c the connection that takes s over from its owner.
func (s *stream) rollTo(c *upConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owner == nil {
		s.owner = c
		return
	}
	s.next, s.pending = c, nil
}

// release hands s over to its replacement (if any) because c, its owner,
// is gone; a stream without one waits for the next event of any.
func (s *stream) release(c *upConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.merges, c)
	if s.owner != c {
		return
	}
	if s.next != nil {
		s.handOver()
		return
	}
	s.owner = nil
}

// owned says whether c still delivers s.
func (s *stream) owned(c *upConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owner == c
}

// maxPending bounds the events a replacement connection holds while the
// one it replaces catches up.
const maxPending = 256

// trySwitch hands s over to replacement c once c's held events continue
// exactly where the owner's left off: nothing is delivered twice or
// skipped.
func (s *stream) trySwitch() {
	if s.next == nil || len(s.pending) == 0 {
		return
	}
	proto := s.hub.spec.proto
	last, ok := proto.Order(s.last.raw)
	if !ok || s.last.raw == nil {
		s.handOver()
		return
	}
	i := 0
	for ; i < len(s.pending); i++ {
		o, ok := proto.Order(s.pending[i].raw)
		if !ok {
			break
		}
		if o.last > last.last {
			if o.seq && o.first > last.last+1 && len(s.pending) < maxPending {
				// The replacement is ahead of the owner: wait for the
				// owner to deliver what lies between.
				s.pending = s.pending[i:]
				return
			}
			break
		}
	}
	s.pending = s.pending[i:]
	if len(s.pending) > 0 {
		s.handOver()
	}
}

// handOver makes the replacement the owner and delivers what it held.
func (s *stream) handOver() {
	s.owner, s.next = s.next, nil
	for _, ev := range s.pending {
		s.publish(ev)
	}
	s.pending = nil
}

func (s *stream) publish(ev event) {
	s.last = ev
	if s.state != nil {
		s.state.Add(ev)
	}
	for ss := range s.subs {
		ss.send(s.name, ev)
	}
	s.hub.fanout.Add(float64(len(s.subs)))
}

// StreamStatus is one shared stream, for sluice status.
type StreamStatus struct {
	Name    string `json:"name"`
	Clients int    `json:"clients"`
	Conn    int64  `json:"upstream_connection"`
}

// HubStatus is one hub's upstream connections and streams.
type HubStatus struct {
	Host        string         `json:"host"`
	Connections int            `json:"upstream_connections"`
	Clients     int64          `json:"clients"`
	Streams     []StreamStatus `json:"streams"`
}

func (h *Hub) status() HubStatus {
	h.mu.Lock()
	st := HubStatus{Host: h.host + h.ns, Clients: h.sessions.Load()}
	for c := range h.conns {
		for _, l := range c.legs {
			if l.up.Load() {
				st.Connections++
			}
		}
	}
	streams := make([]*stream, 0, len(h.streams))
	for _, s := range h.streams {
		streams = append(streams, s)
		var id int64
		if s.on != nil {
			id = s.on.id
		}
		st.Streams = append(st.Streams, StreamStatus{Name: s.name, Conn: id})
	}
	h.mu.Unlock()
	for i, s := range streams {
		st.Streams[i].Clients = s.count()
	}
	slices.SortFunc(st.Streams, func(a, b StreamStatus) int {
		return cmp.Or(b.Clients-a.Clients, strings.Compare(a.Name, b.Name))
	})
	return st
}
