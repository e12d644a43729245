package streams

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// published records what a stream passes on, as its late-joiner state.
type published struct {
	proto protocol
	ids   []int64
}

func (p *published) Add(ev event) {
	o, _ := p.proto.Order(ev.raw)
	p.ids = append(p.ids, o.last)
}

func (p *published) Catchup() []event { return nil }

// TestMergeLegs: the two legs of a connection with a standby are merged
// into one sequence with no gap and no duplicate while either can fill
// it: a leg ahead of what was passed on (it has just redialed, or the
// other lags) holds its events until the other delivers what lies
// between, or drops, or lags too long; a gap both legs show is the
// exchange's own and goes through.
func TestMergeLegs(t *testing.T) {
	s, a, b, out := mergeHarness(binance{})
	diff := func(l *leg, first, last int64) {
		s.deliver(l, event{raw: fmt.Appendf(nil, `{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":%d,"u":%d,"b":[],"a":[]}`, first, last), at: time.Now()})
	}
	want := func(step string, ids ...int64) {
		t.Helper()
		if !slices.Equal(out.ids, ids) {
			t.Fatalf("%s: passed on %v, want %v", step, out.ids, ids)
		}
	}

	diff(a, 1, 2)
	diff(b, 1, 2)
	diff(b, 3, 4)
	diff(a, 3, 4)
	want("both legs in step", 2, 4)

	diff(b, 7, 8) // b redialed, and is ahead of a
	want("b ahead", 2, 4)
	diff(a, 5, 6)
	want("a fills the gap", 2, 4, 6, 8)
	diff(a, 7, 8)
	diff(b, 9, 10)
	want("a's copy dropped", 2, 4, 6, 8, 10)

	diff(a, 13, 14) // a is ahead; then b drops
	want("a ahead", 2, 4, 6, 8, 10)
	b.up.Store(false)
	s.legDown(b)
	want("b dropped: nobody can fill the gap", 2, 4, 6, 8, 10, 14)
	diff(a, 15, 16)
	want("a alone", 2, 4, 6, 8, 10, 14, 16)
	b.up.Store(true)

	diff(a, 19, 20) // the exchange skipped 17-18 for both
	diff(b, 19, 20)
	want("the exchange's own gap", 2, 4, 6, 8, 10, 14, 16, 20)

	s.deliver(b, event{raw: []byte(`{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":23,"u":24,"b":[],"a":[]}`), at: time.Now().Add(-2 * maxHold)})
	diff(b, 25, 26)
	want("a lags too long", 2, 4, 6, 8, 10, 14, 16, 20, 24, 26)
}

// mergeHarness is a stream of a connection with two legs, both up, that
// records what it passes on.
func mergeHarness(proto protocol) (s *stream, a, b *leg, out *published) {
	h := &Hub{spec: &Spec{proto: proto}, fanout: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout"})}
	c := &upConn{h: h}
	a, b = &leg{c: c, n: 0}, &leg{c: c, n: 1}
	c.legs = []*leg{a, b}
	a.up.Store(true)
	b.up.Store(true)
	out = &published{proto: proto}
	s = &stream{name: "test", hub: h, state: out, live: make(chan struct{}), subs: map[*session]struct{}{}, owner: c}
	return s, a, b, out
}

// TestMergeBybitReset: a Bybit book snapshot at u=1 (the exchange's
// service restarted) starts the merged sequence again; a leg's snapshot
// behind what was passed on (it resubscribed while the other led) does
// not take clients' books back.
func TestMergeBybitReset(t *testing.T) {
	s, a, b, out := mergeHarness(bybit{})
	book := func(l *leg, typ string, u int64) {
		s.deliver(l, event{raw: fmt.Appendf(nil, `{"topic":"orderbook.50.BTCUSDT","type":%q,"ts":1,"data":{"s":"BTCUSDT","b":[],"a":[],"u":%d,"seq":1}}`, typ, u), at: time.Now()})
	}
	book(a, "snapshot", 0) // a new book, as the test exchanges start one
	book(a, "delta", 1)
	book(b, "snapshot", 1) // b's subscription answered
	book(a, "delta", 2)
	book(b, "delta", 2)
	book(a, "delta", 3)
	book(b, "snapshot", 2) // b resubscribed, answered late
	book(b, "delta", 3)
	book(a, "snapshot", 1) // the restart
	book(b, "snapshot", 1)
	book(b, "delta", 2)
	book(a, "delta", 2)
	if want := []int64{0, 1, 2, 3, 1, 2}; !slices.Equal(out.ids, want) {
		t.Fatalf("passed on %v, want %v", out.ids, want)
	}
}
