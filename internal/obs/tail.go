package obs

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Tail keeps the last access lines and hands new ones to whoever follows
// them (sluice log --follow), as varnishlog does. A follower that does not
// keep up loses lines, and is told how many; nobody else waits for it.
type Tail struct {
	mu      sync.Mutex
	ring    [][]byte // each slot's buffer is reused: no allocation once warm
	next    int
	full    bool
	follows map[*follower]struct{}
	watched atomic.Int32
}

type follower struct {
	lines   chan []byte
	dropped atomic.Int64
}

// followerQueue is how many lines a follower may be behind before it
// loses some.
const followerQueue = 4096

// NewTail keeps the last n lines.
func NewTail(n int) *Tail {
	return &Tail{ring: make([][]byte, n), follows: map[*follower]struct{}{}}
}

// Watched reports whether someone follows the lines: then every line is
// written here, whatever log.level lets through to the log.
func (t *Tail) Watched() bool { return t != nil && t.watched.Load() > 0 }

// Write takes one access line (writeJSONLine writes a whole line per call).
func (t *Tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ring[t.next] = append(t.ring[t.next][:0], b...)
	t.next = (t.next + 1) % len(t.ring)
	t.full = t.full || t.next == 0
	for f := range t.follows {
		select {
		case f.lines <- append([]byte(nil), b...):
		default:
			f.dropped.Add(1)
		}
	}
	return len(b), nil
}

// Follow returns the lines kept so far, oldest first, and a channel of the
// lines to come; stop ends the following (and closes the channel).
// dropped returns, and resets, how many lines the follower lost.
func (t *Tail) Follow() (recent [][]byte, lines <-chan []byte, dropped func() int64, stop func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	recent = t.recentLocked()
	f := &follower{lines: make(chan []byte, followerQueue)}
	t.follows[f] = struct{}{}
	t.watched.Add(1)
	var once sync.Once
	return recent, f.lines, func() int64 { return f.dropped.Swap(0) }, func() {
		once.Do(func() {
			t.mu.Lock()
			delete(t.follows, f)
			t.mu.Unlock()
			t.watched.Add(-1)
			close(f.lines)
		})
	}
}

// Recent returns the lines kept, oldest first.
func (t *Tail) Recent() [][]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.recentLocked()
}

func (t *Tail) recentLocked() [][]byte {
	var out [][]byte
	if t.full {
		for _, b := range t.ring[t.next:] {
			out = append(out, append([]byte(nil), b...))
		}
	}
	for _, b := range t.ring[:t.next] {
		out = append(out, append([]byte(nil), b...))
	}
	return out
}

// DroppedLine is the line a follower gets in place of n lines it lost.
func DroppedLine(n int64) []byte {
	return fmt.Appendf(nil, `{"msg":"sluice log: %d lines dropped: the reader did not keep up"}`+"\n", n)
}
