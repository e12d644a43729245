package obs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"sluice/internal/decision"
)

// Error is an answer sluice writes itself. Msg, Host and Detail go to the
// client; Err is for the operator's log only.
type Error struct {
	Status int
	Msg    string // short and stable: "host not allowed"
	// Rule names the rule set a request broke (rule violations only).
	Rule   string
	Host   string
	Detail string // what happened and how to change it
	// Hint is the short form of what to change ("add \"x\" to hosts"):
	// the status line of a refused CONNECT carries it with Msg, since
	// many clients print only that line.
	Hint string
	// ProxyStatus is the RFC 9209 error type, e.g. "destination_ip_prohibited".
	ProxyStatus string
	Err         error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// WriteError answers with e as JSON {"error", "host", "detail"}, a
// Proxy-Status header (RFC 9209), and records it for the access log.
func WriteError(w http.ResponseWriter, r *http.Request, e *Error) {
	rec := decision.From(r.Context())
	if rec.Reason == "" {
		rec.Reason = e.Msg
	}
	if e.Err != nil {
		rec.Err = e.Err
	}
	body, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Rule   string `json:"rule,omitempty"`
		Host   string `json:"host,omitempty"`
		Detail string `json:"detail,omitempty"`
	}{e.Msg, e.Rule, e.Host, e.Detail})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	h.Set("Cache-Control", "no-store")
	ps := "sluice"
	if e.ProxyStatus != "" {
		ps += "; error=" + e.ProxyStatus
	}
	if e.Detail != "" {
		ps += "; details=" + sfString(e.Detail)
	}
	h.Set("Proxy-Status", ps)
	body = append(body, '\n')
	if rec.Entry == decision.EntryConnect && r.ProtoMajor == 1 && writeConnectRefusal(w, rec, e, body) {
		return
	}
	w.WriteHeader(e.Status)
	w.Write(body)
}

// writeConnectRefusal answers a CONNECT on HTTP/1 itself, so that the
// status line says why (Python, Go, curl and ccxt print only that line
// of a refused CONNECT): "403 sluice: host not listed; add "x" to hosts".
// It reports false when the connection cannot be taken over.
func writeConnectRefusal(w http.ResponseWriter, rec *decision.Record, e *Error, body []byte) bool {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	defer conn.Close()
	reason := "sluice: " + e.Msg
	if e.Hint != "" {
		reason += "; " + e.Hint
	}
	fmt.Fprintf(brw, "HTTP/1.1 %03d %s\r\n", e.Status, statusLineText(reason))
	w.Header().Set("Connection", "close")
	w.Header().Write(brw)
	brw.WriteString("\r\n")
	brw.Write(body)
	brw.Flush()
	rec.Status, rec.BytesOut = e.Status, int64(len(body))
	return true
}

// statusLineText keeps what a reason phrase may hold (RFC 9112 section
// 4): tabs, spaces and visible ASCII.
func statusLineText(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c != '\t' && (c < ' ' || c > '~') {
			b[i] = ' '
		}
	}
	return string(b)
}

// sfString encodes s as a structured-field string (RFC 8941): printable
// ASCII only, with '"' and '\\' escaped.
func sfString(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}

// A BodyTimeoutError says which limit cut a request body off. It is a
// deadline error (errors.Is os.ErrDeadlineExceeded), as a read that ran
// into a socket deadline is.
type BodyTimeoutError struct {
	// Key is the config key of the limit: timeouts.body_idle, timeouts.body
	// or limits.body_min_rate.
	Key string
	// Detail says what the body did, for the client and the log.
	Detail string
}

func (e *BodyTimeoutError) Error() string {
	return "request body cut off by " + e.Key + ": " + e.Detail
}

// Is makes a BodyTimeoutError a deadline error.
func (e *BodyTimeoutError) Is(target error) bool { return target == os.ErrDeadlineExceeded }

// WriteBodyTimeout answers a request whose body was cut off for sending
// too slowly (err says by which limit, when it is a [BodyTimeoutError]),
// and closes the connection: what the client sends next cannot be told
// from the rest of that body.
func WriteBodyTimeout(w http.ResponseWriter, r *http.Request, err error) {
	detail := "the request body sent nothing for timeouts.body_idle"
	if te, ok := errors.AsType[*BodyTimeoutError](err); ok {
		detail = te.Detail + " (" + te.Key + ")"
	}
	w.Header().Set("Connection", "close")
	WriteError(w, r, &Error{Status: http.StatusRequestTimeout, Msg: "request body timed out", Host: decision.From(r.Context()).Target.String(),
		Detail: detail + "; nothing more of it was forwarded", Err: err})
}

// StatusClientClosed is the status the access log records for a request
// whose client went away before its answer (nginx's 499): nothing is sent.
const StatusClientClosed = 499

// Shutdown marks the requests of a server that is shutting down, so that
// one it cuts off is logged as that, not as a client that left, and
// counts them, so that their lines are written before sluice exits.
type Shutdown struct {
	cut      atomic.Bool
	once     sync.Once
	done     chan struct{}
	inflight atomic.Int64
}

// NewShutdown returns a Shutdown for a server that runs.
func NewShutdown() *Shutdown { return &Shutdown{done: make(chan struct{})} }

type shutdownKey struct{}

// WithShutdown gives ctx's requests s.
func WithShutdown(ctx context.Context, s *Shutdown) context.Context {
	return context.WithValue(ctx, shutdownKey{}, s)
}

// CutOff records that the server is closing the connections still open:
// the grace of timeouts.shutdown is over.
func (s *Shutdown) CutOff() {
	s.cut.Store(true)
	s.once.Do(func() { close(s.done) })
}

// Wait waits up to d for the requests in flight to finish their lines.
func (s *Shutdown) Wait(d time.Duration) {
	for deadline := time.Now().Add(d); s.inflight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

// CutOffDone is closed when ctx's server cuts its requests off (nil when
// ctx has no Shutdown).
func CutOffDone(ctx context.Context) <-chan struct{} {
	if s, _ := ctx.Value(shutdownKey{}).(*Shutdown); s != nil {
		return s.done
	}
	return nil
}

// cutOff reports whether ctx's server cut its requests off.
func cutOff(ctx context.Context) bool {
	s, _ := ctx.Value(shutdownKey{}).(*Shutdown)
	return s != nil && s.cut.Load()
}
