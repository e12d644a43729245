package streams

import "time"

// legMerge is where the two legs of one upstream connection with a
// standby stand in a stream: the last event passed on from either, and
// the events each leg holds while it is ahead of what was passed on with
// a gap between (it has just reconnected, or the other leg lags).
type legMerge struct {
	last order
	seen bool
	held [2][]heldEvent
}

type heldEvent struct {
	ev event
	o  order
}

// maxHold bounds how long a leg's event waits for the other leg to
// deliver what lies before it.
const maxHold = time.Second

// merge takes an event of s from leg l of a connection with a standby.
// An event either leg has passed on already is dropped; one that skips
// ahead waits while the other leg may still deliver what lies between:
// that is what makes a leg dropping without notice, or redialing, cost
// no client an event.
func (s *stream) merge(l *leg, ev event) {
	c := l.c
	m := s.merges[c]
	if m == nil {
		if s.merges == nil {
			s.merges = map[*upConn]*legMerge{}
		}
		m = &legMerge{}
		s.merges[c] = m
	}
	o, ok := s.hub.spec.proto.Order(ev.raw)
	if !ok {
		// Nothing to merge it by: the first leg's alone, or the
		// standby's while the first is down.
		if l.n == 0 || !l.other().up.Load() {
			s.take(c, ev)
		}
		return
	}
	if o.reset && m.seen && o.last < m.last.last {
		*m = legMerge{}
	}
	switch {
	case m.seen && o.last <= m.last.last: // passed on already
	case len(m.held[l.n]) > 0 || m.seen && o.seq && o.first > m.last.last+1:
		m.held[l.n] = append(m.held[l.n], heldEvent{ev, o})
	default:
		s.passMerged(c, m, heldEvent{ev, o})
	}
	s.drainMerge(c, m)
}

func (s *stream) passMerged(c *upConn, m *legMerge, h heldEvent) {
	m.last, m.seen = h.o, true
	s.take(c, h.ev)
}

// drainMerge passes on the held events that now continue what was passed
// on, drops those passed on already, and lets a gap through when nothing
// will fill it.
func (s *stream) drainMerge(c *upConn, m *legMerge) {
	for {
		for i, held := range m.held {
			n := 0
			for n < len(held) && held[n].o.last <= m.last.last {
				n++
			}
			m.held[i] = held[n:]
		}
		i := m.nextHeld(c)
		if i < 0 {
			return
		}
		h := m.held[i][0]
		m.held[i] = m.held[i][1:]
		s.passMerged(c, m, h)
	}
}

// nextHeld is the leg whose first held event may go now, or -1.
func (m *legMerge) nextHeld(c *upConn) int {
	for i, held := range m.held {
		if len(held) > 0 && (!held[0].o.seq || held[0].o.first <= m.last.last+1) {
			return i
		}
	}
	for i, held := range m.held {
		if len(held) == 0 {
			continue
		}
		other := m.held[1-i]
		switch {
		case len(other) > 0: // both legs skip it: the exchange's own gap
			if other[0].o.first < held[0].o.first {
				return 1 - i
			}
			return i
		case !c.legs[1-i].up.Load(), len(held) >= maxPending, time.Since(held[0].ev.at) > maxHold:
			return i
		}
	}
	return -1
}

// legDown lets s go on without leg l, which dropped: what it held is
// dropped with it, and what the other leg held waits for nothing now.
func (s *stream) legDown(l *leg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.merges[l.c]
	if m == nil {
		return
	}
	m.held[l.n] = nil
	s.drainMerge(l.c, m)
}
