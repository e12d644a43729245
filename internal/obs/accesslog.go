package obs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

// Metrics are the per-request collectors written by AccessLog.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// children caches the labelled series: looking one up in a vector
	// hashes its labels, which is a cost on every request. The label
	// sets are small and bounded.
	children sync.Map // [3]string{mode, decision, code} -> prometheus.Counter; mode -> prometheus.Observer
}

func (m *Metrics) observe(rec *Record, d time.Duration) {
	k := [3]string{rec.Mode, rec.Decision, codeClass(rec.Status)}
	c, ok := m.children.Load(k)
	if !ok {
		c, _ = m.children.LoadOrStore(k, m.requests.WithLabelValues(k[:]...))
	}
	c.(prometheus.Counter).Inc()
	o, ok := m.children.Load(rec.Mode)
	if !ok {
		o, _ = m.children.LoadOrStore(rec.Mode, m.duration.WithLabelValues(rec.Mode))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
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
	return m, nil
}

// LogOptions configures AccessLog.
type LogOptions struct {
	// Mode is the Record's mode unless an inner stage changes it.
	Mode string
	// Queries reports whether query strings are logged (redacted); it is
	// read per request, so a config reload takes effect at once.
	Queries func() bool
}

// AccessLog writes one canonical line and the metrics for every request.
// It is the outermost stage; inner stages fill the Record in the context.
func AccessLog(log *slog.Logger, m *Metrics, opts LogOptions) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &Record{
				ClientIP: clientIP(r.RemoteAddr), Mode: opts.Mode, Method: r.Method,
				Host: r.Host, Path: r.URL.Path, Start: time.Now(),
			}
			if r.URL.RawQuery != "" && opts.Queries != nil && opts.Queries() {
				rec.Path += "?" + RedactQuery(r.URL.Query())
			}
			cw := &countingWriter{ResponseWriter: w, rec: rec}
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = &countingBody{ReadCloser: r.Body, n: &rec.BytesIn}
			}
			defer func() {
				// A handler aborts a response (http.ErrAbortHandler) by
				// panicking; the line is still written, then the panic goes on.
				if p := recover(); p != nil {
					if rec.Err == nil {
						rec.Err = fmt.Errorf("response aborted: %v", p)
					}
					write(r.Context(), log, m, rec, time.Since(rec.Start))
					panic(p)
				}
				write(r.Context(), log, m, rec, time.Since(rec.Start))
			}()
			next.ServeHTTP(cw, r.WithContext(WithRecord(r.Context(), rec)))
		})
	}
}

func write(ctx context.Context, log *slog.Logger, m *Metrics, rec *Record, d time.Duration) {
	m.observe(rec, d)
	level := slog.LevelInfo
	switch {
	case rec.Decision == "deny" || rec.Status == http.StatusForbidden || rec.Status == http.StatusMisdirectedRequest:
		level = slog.LevelWarn
	case rec.Err != nil && rec.Status >= 500, rec.Status == 0 && rec.Err != nil:
		level = slog.LevelError
	case rec.Err != nil:
		level = slog.LevelWarn
	}
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("client_ip", rec.ClientIP), slog.String("mode", rec.Mode),
		slog.String("method", rec.Method), slog.String("host", rec.Host), slog.String("path", rec.Path),
		slog.String("decision", rec.Decision), slog.String("rule", rec.Rule), slog.String("reason", rec.Reason),
		slog.Int("status", rec.Status), slog.String("cache", rec.Cache), slog.String("upstream_addr", rec.UpstreamAddr),
		slog.Int64("bytes_in", rec.BytesIn), slog.Int64("bytes_out", rec.BytesOut), slog.Float64("duration", d.Seconds()),
	}
	if rec.Err != nil {
		attrs = append(attrs, slog.String("error", rec.Err.Error()))
	}
	log.LogAttrs(ctx, level, "request", attrs...)
}

func codeClass(status int) string {
	if status < 100 || status > 599 {
		return "none"
	}
	return strconv.Itoa(status/100) + "xx"
}

func clientIP(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

// SecretName reports whether a header or query parameter name looks like
// it carries a credential: Authorization, Cookie, X-MBX-APIKEY, apiKey,
// signature, access_token, passphrase, ... It allocates nothing.
func SecretName(name string) bool {
	for _, s := range secretWords {
		if containsFold(name, s) {
			return true
		}
	}
	return false
}

var secretWords = []string{"key", "sign", "token", "secret", "pass", "auth", "session", "cred", "cookie"}

// containsFold reports whether s contains the lowercase ASCII word sub,
// ignoring ASCII case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for ; j < len(sub); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != sub[j] {
				break
			}
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}

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

// countingWriter records the status and counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	rec   *Record
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

type countingBody struct {
	io.ReadCloser
	n *int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	*b.n += int64(n)
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
				rec := RecordFrom(r.Context())
				rec.Err = fmt.Errorf("panic: %v", p)
				log.Error("panic in request handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				WriteError(w, r, &Error{Status: http.StatusInternalServerError, Msg: "internal error", Host: r.Host, ProxyStatus: "proxy_internal_error"})
			}()
			next.ServeHTTP(w, r)
		})
	}
}
