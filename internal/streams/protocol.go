package streams

import (
	"net/http"
	"time"
)

// protocol is one exchange's market-stream protocol: its client paths and
// messages, its upstream requests and events, and what a client joining a
// shared stream late must get first.
type protocol interface {
	// Name is the protocol's name in config (streams.protocol).
	Name() string
	// Session reads a client's upgrade: the market it belongs to, the
	// streams its URL names, and its framing. ok is false for what must
	// not be shared (a private stream, a path that is not a stream path).
	Session(r *http.Request) (ns string, initial []string, combined, ok bool)
	// UpstreamPath is where sluice's own connections for market ns go.
	UpstreamPath(ns string) string
	// Parse reads a client's message; one that is wrong gets its answer.
	Parse(msg []byte) request
	// Answer is the answer to a request that succeeded; result is the
	// JSON result where the protocol has one (Binance).
	Answer(rq request, result string) []byte
	// Refuse is the answer to a request sluice will not carry out.
	Refuse(rq request, msg string) []byte
	// Subscribe is sluice's request that subscribes (or unsubscribes)
	// names upstream.
	Subscribe(names []string, unsubscribe bool, id int64) []byte
	// Batch is the most streams one subscribe request may name.
	Batch() int
	// Ping is the message that keeps an upstream connection alive, for an
	// exchange that wants its clients to ping (nil: the exchange pings).
	Ping() []byte
	// Upstream reads a message of one of sluice's upstream connections.
	Upstream(msg []byte) upstreamMsg
	// State is what a shared stream keeps for clients that join it late
	// (nil: nothing, its next event is all they need).
	State(stream string, spec *Spec) streamState
	// Order reads an event's place in its stream, to merge two
	// connections carrying it; ok is false when it has none.
	Order(raw []byte) (order, bool)
}

// streamState follows a stream's events so that a client joining it late
// first gets what it would have got from the exchange.
type streamState interface {
	Add(ev event)
	Catchup() []event
}

// replay keeps a stream's recent events: Binance's diff-depth streams,
// whose late joiner needs the diffs since the snapshot it will fetch.
type replay struct {
	keep   time.Duration
	events []event
}

// maxReplay bounds a stream's replay however fast its events come.
const maxReplay = 512

func (r *replay) Add(ev event) {
	now := time.Now()
	cut := 0
	for cut < len(r.events) && (now.Sub(r.events[cut].at) > r.keep || len(r.events)-cut >= maxReplay) {
		cut++
	}
	if ev.at.IsZero() {
		ev.at = now
	}
	r.events = append(r.events[cut:], ev)
}

func (r *replay) Catchup() []event {
	out := make([]event, len(r.events))
	for i, e := range r.events {
		e.at = time.Time{}
		out[i] = e
	}
	return out
}
