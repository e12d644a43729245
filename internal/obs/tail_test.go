package obs

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestTailFollow: a follower gets the lines kept before it came, then
// each new one; one that falls behind is told how many it lost.
func TestTailFollow(t *testing.T) {
	tail := NewTail(2)
	for _, l := range []string{"a\n", "b\n", "c\n"} {
		tail.Write([]byte(l))
	}
	recent, lines, dropped, stop := tail.Follow()
	if len(recent) != 2 || string(recent[0]) != "b\n" || string(recent[1]) != "c\n" || !tail.Watched() {
		t.Fatalf("recent %q, watched %v; want the last two and a follower", recent, tail.Watched())
	}
	tail.Write([]byte("d\n"))
	if l := <-lines; string(l) != "d\n" {
		t.Errorf("followed %q, want d", l)
	}
	for range followerQueue + 3 {
		tail.Write([]byte("x\n"))
	}
	if n := dropped(); n != 3 {
		t.Errorf("dropped %d, want 3", n)
	}
	stop()
	if tail.Watched() {
		t.Error("still watched after stop")
	}
}

// BenchmarkAccessLine: what the access log costs a request, writing its
// line to the log alone, and to the log and the tail that sluice log reads
// (nobody following).
func BenchmarkAccessLine(b *testing.B) {
	for _, bc := range []struct {
		name string
		tail *Tail
	}{{"tail=none", nil}, {"tail=200", NewTail(200)}} {
		b.Run(bc.name, func(b *testing.B) {
			m, err := NewMetrics(prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			log := slog.New(slog.NewJSONHandler(io.Discard, nil))
			h := AccessLog(log, m, LogOptions{JSONLines: io.Discard, Tail: bc.tail})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
			req := httptest.NewRequest(http.MethodGet, "http://api.test/api/v3/ticker?symbol=BTCUSDT", strings.NewReader(""))
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				h.ServeHTTP(w, req)
			}
		})
	}
}
