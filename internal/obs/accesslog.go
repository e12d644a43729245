// Package obs holds what every request shares for observability: the
// access-log stage (one canonical line and the metrics per request, written
// from the request's decision record), panic recovery, and the JSON error
// answers that sluice itself writes, and each client connection's account
// of the streams it reset (Conns).
//
// Metrics: sluice_proxy_requests_total{mode,decision,code},
// sluice_proxy_request_duration_seconds{mode}, sluice_client_stream_resets_total,
// sluice_client_reset_closes_total.
package obs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/decision"
	"sluice/internal/metrics"
)

// Metrics are the per-request collectors written by AccessLog.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// counters and durations hold the labelled series by index: looking
	// one up in a vector hashes its labels, a cost on every request. A
	// request series is made when first used, so that /metrics lists only
	// the combinations that can occur (and those NewMetrics makes).
	counters  [decision.Entries][decision.Actions][len(codeClasses)]atomic.Pointer[prometheus.Counter]
	durations [decision.Entries]prometheus.Observer
	refusals  refusals
}

func (m *Metrics) observe(rec *decision.Record, d time.Duration) {
	slot := &m.counters[rec.Entry][rec.Outcome()][codeClass(rec.Status)]
	c := slot.Load()
	if c == nil {
		counter := m.requests.WithLabelValues(rec.Entry.String(), rec.Outcome().String(), codeClasses[codeClass(rec.Status)])
		c = &counter
		slot.Store(c)
	}
	(*c).Inc()
	m.durations[rec.Entry].Observe(d.Seconds())
}

// NewMetrics creates the collectors and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "requests_total",
			Help: "Requests and CONNECTs handled, by mode, policy decision and status class.",
		}, []string{"mode", "decision", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "request_duration_seconds",
			Help:    "Time from request to the end of the response (or tunnel), by mode.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"mode"}),
	}
	if err := metrics.Register(reg, m.requests, m.duration); err != nil {
		return nil, err
	}
	for e := range decision.Entries {
		m.durations[e] = m.duration.WithLabelValues(decision.Entry(e).String()) // every mode from the first scrape
	}
	for mode, actions := range entryActions {
		m.requests.WithLabelValues(mode.String(), decision.Deny.String(), codeClasses[codeClass(http.StatusForbidden)])
		for _, a := range actions {
			for _, status := range []int{http.StatusOK, http.StatusForbidden, http.StatusBadGateway} {
				m.requests.WithLabelValues(mode.String(), a.String(), codeClasses[codeClass(status)])
			}
		}
	}
	return m, nil
}

// entryActions are the decisions each entry point leads to besides deny:
// their request series exist, at zero, from the first scrape.
var entryActions = map[decision.Entry][]decision.Action{
	decision.EntryForward:         {decision.Intercept},
	decision.EntryConnect:         {decision.Tunnel, decision.Intercept},
	decision.EntryIntercept:       {decision.Intercept},
	decision.EntryReverse:         {decision.Reverse},
	decision.EntryTransparentTLS:  {decision.Tunnel, decision.Intercept},
	decision.EntryTransparentHTTP: {decision.Intercept},
}

// LogOptions configures AccessLog.
type LogOptions struct {
	// Queries logs query strings (redacted).
	Queries bool
	// JSONLines, when set, receives the access lines as JSON directly, as
	// log's JSON handler would write them, at a fraction of its cost (the
	// line is the busiest thing sluice logs). log still decides the level.
	JSONLines io.Writer
	// Tail (nil: none) gets every line the log gets, and while someone
	// follows it, every line whatever the log's level.
	Tail *Tail
}

// AccessLog writes one canonical line and the metrics for every request.
// It is the outermost stage: it creates the request's decision record
// (its entry point from the listener's context), and the inner stages fill
// it in.
func AccessLog(log *slog.Logger, m *Metrics, opts LogOptions) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The record and the writer that fills it live as long as each
			// other: one allocation.
			st := &struct {
				rec decision.Record
				cw  countingWriter
			}{rec: decision.Record{
				Entry: decision.EntryFrom(r.Context()), ClientIP: decision.ClientIP(r), Method: r.Method,
				Path: r.URL.Path, Start: time.Now(),
			}}
			rec := &st.rec
			if r.URL.RawQuery != "" && opts.Queries {
				rec.Query = RedactQuery(r.URL.Query())
			}
			if s, _ := r.Context().Value(shutdownKey{}).(*Shutdown); s != nil {
				s.inflight.Add(1)
				defer s.inflight.Add(-1)
			}
			st.cw = countingWriter{ResponseWriter: w, rec: rec}
			cw := &st.cw
			var body *countingBody
			if r.Body != nil && r.Body != http.NoBody {
				body = &countingBody{ReadCloser: r.Body}
				r.Body = body
			}
			defer func() {
				if body != nil {
					rec.BytesIn = body.n.Load()
				}
				if rec.Status == StatusClientClosed && cutOff(r.Context()) {
					rec.Reason = "cut off: sluice shut down before the answer was complete (timeouts.shutdown)"
				}
				// A handler aborts a response (http.ErrAbortHandler) by
				// panicking; the line is still written, then the panic goes on.
				if p := recover(); p != nil {
					if rec.Err == nil {
						rec.Err = fmt.Errorf("response aborted: %v", p)
					}
					write(r.Context(), log, opts, m, rec, time.Since(rec.Start))
					panic(p)
				}
				// An HTTP/2 stream the client reset before its answer was
				// done: a flood of them is summarised, not logged line by line.
				if r.ProtoMajor == 2 && r.Context().Err() != nil && !noteReset(r, time.Now()) {
					m.observe(rec, time.Since(rec.Start))
					return
				}
				write(r.Context(), log, opts, m, rec, time.Since(rec.Start))
			}()
			next.ServeHTTP(cw, r.WithContext(decision.With(r.Context(), rec)))
		})
	}
}

func write(ctx context.Context, log *slog.Logger, opts LogOptions, m *Metrics, rec *decision.Record, d time.Duration) {
	m.observe(rec, d)
	if rec.RefusedBy != decision.None {
		m.refusals.add(rec)
	}
	level := slog.LevelInfo
	outcome := rec.Outcome()
	switch {
	case outcome == decision.Deny || rec.Status == http.StatusForbidden || rec.Status == http.StatusMisdirectedRequest:
		level = slog.LevelWarn
	case rec.Status == StatusClientClosed:
		// The client left: nothing for an operator to act on.
	case rec.Err != nil && rec.Status >= 500, rec.Status == 0 && rec.Err != nil:
		level = slog.LevelError
	case rec.Err != nil:
		level = slog.LevelWarn
	}
	logged, tailed := log.Enabled(ctx, level), opts.Tail.Watched()
	if !logged && !tailed {
		return
	}
	host, path := "", rec.Path
	if rec.Target.Host != "" {
		host = rec.TargetAddr()
	}
	if rec.Query != "" {
		path += "?" + rec.Query
	}
	var buf [28]field
	fs := append(buf[:0],
		str("client_ip", rec.ClientIP), str("mode", rec.Entry.String()),
		str("method", rec.Method), str("host", host), str("path", path),
		str("decision", outcome.String()), str("rule", rec.Rule), str("reason", rec.Reason),
		num("status", float64(rec.Status)), str("cache", rec.Cache.String()), str("upstream_addr", rec.UpstreamAddr),
		num("bytes_in", float64(rec.BytesIn)), num("bytes_out", float64(rec.BytesOut)), frac("duration", d.Seconds()),
	)
	if rec.Client != "" {
		fs = append(fs, str("client", rec.Client))
	}
	if rec.RefusedBy != decision.None {
		fs = append(fs, str("refused_by", rec.RefusedBy.String()))
	}
	if rec.RuleSet != "" {
		fs = append(fs, str("rule_set", rec.RuleSet), str("check", rec.Check))
	}
	if rec.Budget != "" {
		fs = append(fs, str("budget", rec.Budget), frac("budget_wait", rec.Waited.Seconds()))
	}
	if rec.Err != nil {
		fs = append(fs, str("error", rec.Err.Error()))
	}
	if st := rec.Stream; st != nil {
		fs = append(fs, str("stream", streamKind(st.Shared)), num("subscriptions", float64(st.Subscriptions)),
			num("messages_in", float64(st.MessagesIn)), num("messages_out", float64(st.MessagesOut)), str("close", st.Close))
	}
	// One encoding for the log's JSON lines and the tail.
	var to [2]io.Writer
	ws := to[:0]
	if opts.Tail != nil {
		ws = append(ws, opts.Tail)
	}
	if logged && opts.JSONLines != nil {
		ws = append(ws, opts.JSONLines)
	}
	writeJSONLine(level, fs, ws...)
	if !logged || opts.JSONLines != nil {
		return
	}
	attrs := make([]slog.Attr, len(fs))
	for i, f := range fs {
		attrs[i] = f.attr()
	}
	log.LogAttrs(ctx, level, "request", attrs...)
}

func streamKind(shared bool) string {
	if shared {
		return "shared"
	}
	return "spliced"
}

// codeClasses are the status classes' label values, by codeClass.
var codeClasses = [...]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// codeClass is the index in codeClasses of status's class.
func codeClass(status int) int {
	if status < 100 || status > 599 {
		return 0
	}
	return status / 100
}

// SecretName reports whether a header or query parameter name looks like
// it carries a credential: Authorization, Cookie, X-MBX-APIKEY, apiKey,
// signature, access_token, passphrase, ... It allocates nothing.
func SecretName(name string) bool {
	// One pass over name, trying at each byte only the words that start
	// with it: every request's header names go through here, several
	// times, and a pass per word cost about 1% of a cache hit.
	for i := 0; i < len(name); i++ {
		// |0x20 lowers an ASCII letter; no other byte becomes one.
		for _, w := range secretWordsByFirst[name[i]|0x20] {
			if rest := name[i:]; len(rest) >= len(w) && strings.EqualFold(rest[:len(w)], w) {
				return true
			}
		}
	}
	return false
}

var secretWords = []string{"key", "sign", "token", "secret", "pass", "auth", "session", "cred", "cookie"}

// secretWordsByFirst holds secretWords by their first byte.
var secretWordsByFirst = func() (by [256][]string) {
	for _, w := range secretWords {
		by[w[0]] = append(by[w[0]], w)
	}
	return by
}()

// RedactQuery encodes q with the values of credential-like parameters
// replaced by "REDACTED".
func RedactQuery(q url.Values) string {
	for k, vs := range q {
		if SecretName(k) {
			for i := range vs {
				vs[i] = "REDACTED"
			}
		}
	}
	return q.Encode()
}

var _ http.ResponseWriter = (*countingWriter)(nil)

// countingWriter records the status and counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	rec   *decision.Record
	wrote bool
}

func (w *countingWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		if w.wrote {
			return // a second WriteHeader is a no-op in net/http too
		}
		w.wrote = true
		w.rec.Status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.wrote = true
		w.rec.Status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.rec.BytesOut += int64(n)
	return n, err
}

// ReadFrom keeps io.Copy's sendfile/splice path when the writer has one.
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wrote {
		w.wrote = true
		w.rec.Status = http.StatusOK
	}
	n, err := io.Copy(w.ResponseWriter, r)
	w.rec.BytesOut += n
	return n, err
}

// Unwrap lets http.ResponseController reach Flush, Hijack and deadlines.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the body bytes read. The forwarder's transport may
// still be reading it on its own goroutine when the handler returns, so
// the count is atomic.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// Recover turns a panic in a later stage into a 500 that the access log
// records, instead of a dropped connection. http.ErrAbortHandler passes
// through: it is how a handler aborts a response on purpose.
func Recover(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				p := recover()
				if p == nil {
					return
				}
				if p == http.ErrAbortHandler {
					panic(p)
				}
				rec := decision.From(r.Context())
				rec.Err = fmt.Errorf("panic: %v", p)
				log.Error("panic in request handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				WriteError(w, r, &Error{Status: http.StatusInternalServerError, Msg: "internal error", ProxyStatus: "proxy_internal_error"})
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// HasCredentials reports whether r carries an API key, a signature, a
// token or a cookie, in a header or in the query: the one credential check
// of the cache and the blob store. It runs on every cached
// request, so it allocates nothing.
func HasCredentials(r *http.Request) bool {
	for name := range r.Header {
		if SecretName(name) {
			return true
		}
	}
	for q := r.URL.RawQuery; q != ""; {
		var part string
		part, q, _ = strings.Cut(q, "&")
		name, _, _ := strings.Cut(part, "=")
		if strings.Contains(name, "%") {
			if n, err := url.QueryUnescape(name); err == nil {
				name = n
			}
		}
		if SecretName(name) {
			return true
		}
	}
	return false
}
