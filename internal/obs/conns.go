package obs

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

// Limits on the streams an HTTP/2 client may reset (cancel before their
// answer, CVE-2023-44487): past resetLogBurst a connection's resets are
// counted instead of logged one line each, and a connection whose client
// resets more than resetLimit streams within resetWindow is closed.
const (
	resetLogBurst = 3
	resetLimit    = 100
	resetWindow   = 10 * time.Second
)

// Conns keeps what the access log knows about each client connection: the
// streams its client reset. Plug ConnContext and ConnState into every
// http.Server whose requests reach AccessLog.
type Conns struct {
	log    *slog.Logger
	resets prometheus.Counter
	closed prometheus.Counter
	open   sync.Map // net.Conn -> *clientConn
}

// NewConns registers sluice_client_stream_resets_total and
// sluice_client_reset_closes_total on reg (nil: not registered).
func NewConns(log *slog.Logger, reg prometheus.Registerer) (*Conns, error) {
	c := &Conns{log: log,
		resets: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "client", Name: "stream_resets_total",
			Help: "HTTP/2 streams that a client reset while sluice was still answering them."}),
		closed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "client", Name: "reset_closes_total",
			Help: "Client connections sluice closed because they reset streams too fast."}),
	}
	if err := metrics.Register(reg, c.resets, c.closed); err != nil {
		return nil, err
	}
	return c, nil
}

type clientConnKey struct{}

// clientConn is one client connection's reset account.
type clientConn struct {
	conn  net.Conn
	conns *Conns

	mu          sync.Mutex
	resets      int // all of them
	windowStart time.Time
	inWindow    int
	unlogged    int // access lines not written, summarised at the end
	closing     bool
}

// ConnContext is an http.Server's ConnContext: it gives c's requests its account.
func (cs *Conns) ConnContext(ctx context.Context, c net.Conn) context.Context {
	cc := &clientConn{conn: c, conns: cs}
	cs.open.Store(c, cc)
	return context.WithValue(ctx, clientConnKey{}, cc)
}

// ConnState is an http.Server's ConnState: when a connection ends, one
// line summarises the resets that were not logged one by one.
func (cs *Conns) ConnState(c net.Conn, state http.ConnState) {
	if state != http.StateClosed && state != http.StateHijacked {
		return
	}
	v, ok := cs.open.LoadAndDelete(c)
	if !ok {
		return
	}
	cc := v.(*clientConn)
	cc.mu.Lock()
	resets, unlogged, closing := cc.resets, cc.unlogged, cc.closing
	cc.mu.Unlock()
	switch {
	case closing:
		cs.log.Warn("closed a client connection that reset streams too fast (HTTP/2 rapid reset)", "client", c.RemoteAddr().String(),
			"reset_streams", resets, "lines_not_logged", unlogged, "limit", fmt.Sprintf("%d in %s", resetLimit, resetWindow))
	case unlogged > 0:
		cs.log.Info("client connection ended after it reset streams", "client", c.RemoteAddr().String(),
			"reset_streams", resets, "lines_not_logged", unlogged)
	}
}

// noteReset records that r's client reset its stream before the answer was
// complete. It reports whether the access line is still to be written.
func noteReset(r *http.Request, now time.Time) (logIt bool) {
	cc, _ := r.Context().Value(clientConnKey{}).(*clientConn)
	if cc == nil {
		return true // a server without an account: every line is written
	}
	cs := cc.conns
	cs.resets.Inc()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.resets++
	if now.Sub(cc.windowStart) > resetWindow {
		cc.windowStart, cc.inWindow = now, 0
	}
	cc.inWindow++
	if cc.inWindow > resetLimit && !cc.closing {
		cc.closing = true // the summary line says so when it ends
		cs.closed.Inc()
		cc.conn.Close()
	}
	if cc.resets <= resetLogBurst {
		return true
	}
	cc.unlogged++
	return false
}
