// Package admin serves sluice's admin listener (loopback by default):
//
//	GET    /                  the live dashboard (package dashboard); with
//	GET    /status            its numbers as JSON, and
//	GET    /events            as Server-Sent Events
//	GET    /healthz           {"status":"ok","data_dir":...} while the proxy runs;
//	                          503 {"status":"draining",...} while it shuts down
//	GET    /metrics           Prometheus metrics of every component
//	GET    /ca.pem            the CA certificate clients must trust (public)
//	GET    /v1/blobs          the blob store: size, files, entries, downloads in progress
//	DELETE /v1/blobs?id=ID    remove the entries with that URL key or digest
//	DELETE /v1/blobs?all=1    remove every entry
//	POST   /v1/blobs/gc       remove unreferenced and temporary files
//	GET    /config            the running config, as YAML
//	PUT    /config            validate a whole new config (YAML) and swap it in;
//	                          ?dir=ABS resolves its relative paths there (the
//	                          file's directory), else the running config's
//	GET    /bans              the banned clients
//	POST   /bans              ban {"client": IP or "client:NAME", "duration": "1h", "reason": "..."}
//	DELETE /bans/{client}     lift a ban
//	GET    /dns/pins          the pinned upstream addresses, and answers that disagree
//	POST   /dns/pins/{host}/accept
//	                          move host's pin to the answer that disagreed
//
// Every endpoint but the dashboard's, /healthz, /metrics and /ca.pem needs the bearer
// token from DATA_DIR/admin.token.
// Errors are JSON {"error": "..."}.
package admin

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"sluice/internal/blobs"
	"sluice/internal/dashboard"
	"sluice/internal/filter"
	"sluice/internal/guardrails"
	"sluice/internal/obs"
	"sluice/internal/resolve"
)

// Options are what New needs.
type Options struct {
	Gatherer  prometheus.Gatherer
	CACertPEM []byte
	Log       *slog.Logger
	// Blobs is the blob store, nil if off.
	Blobs *blobs.Store
	// Bans is the client ban list.
	Bans *filter.Bans
	// Pins are the DNS pins, nil with dns.pin: off.
	Pins *resolve.Pins
	// Token is the bearer token the protected endpoints require.
	Token string
	// Config returns the running config as YAML; Reload validates a new
	// one (its relative paths against dir; "": the running config's) and
	// swaps it in, returning what takes effect only after a restart, or
	// returns every problem found.
	Config func() ([]byte, error)
	Reload func(yaml []byte, dir string) (restartOnly []string, err error)
	// DataDir is the running sluice's data dir, which /healthz names so
	// that the command line finds the token whatever config it was given.
	DataDir string
	// Dashboard (nil: none) serves GET /, /status and /events.
	Dashboard *dashboard.Dashboard
	// Purge removes cached responses of host ("": every host) under a
	// path prefix, here and in the fleet's shared cache.
	Purge func(ctx context.Context, host, pathPrefix string) (local, shared int, err error)
	// Guard (nil: none) holds the trading halts; HaltScope checks that a
	// scope (client:NAME, group:NAME, all) names something the running
	// config has.
	Guard     *guardrails.Guard
	HaltScope func(scope string) error
	// Halts (nil: no fleet) shares the halts with the fleet's instances.
	Halts SharedHalts
	// Tail (nil: none) has the access lines for GET /v1/log.
	Tail *obs.Tail
	// Why explains what the running config does with a request to target
	// (HOST[:PORT]) with method, path and client (each may be empty).
	Why func(ctx context.Context, target, method, path, client string) any
}

// SharedHalts are a fleet's halts, held by every instance.
type SharedHalts interface {
	Put(ctx context.Context, h guardrails.Halt) error
	Remove(ctx context.Context, scope string) error
}

// Server is the admin HTTP server.
type Server struct {
	srv *http.Server
	// draining is set when sluice begins to shut down: /healthz answers
	// 503 from then on, so that a load balancer stops sending clients.
	draining atomic.Bool
	// stopping is closed when the server shuts down: followers of the
	// log stop then, instead of holding the shutdown for its grace.
	stopping chan struct{}
}

// New builds the admin server; Serve starts it.
// maxConfigBytes bounds a PUT /config body, as config files are bounded.
const maxConfigBytes = 16 << 20

func New(opts Options) *Server {
	s := &Server{stopping: make(chan struct{})}
	mux := http.NewServeMux()
	private := http.NewServeMux() // behind the token
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining", "data_dir": opts.DataDir,
				"reason": "sluice is shutting down: it takes no new connections, and requests in flight finish within timeouts.shutdown"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "data_dir": opts.DataDir})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(opts.Log.Handler(), slog.LevelError),
	}))
	mux.HandleFunc("GET /ca.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Header().Set("Content-Disposition", `attachment; filename="sluice-ca.pem"`)
		w.Write(opts.CACertPEM)
	})
	if opts.Dashboard != nil {
		opts.Dashboard.Register(mux)
	}
	if b := opts.Blobs; b != nil {
		private.HandleFunc("GET /v1/blobs", func(w http.ResponseWriter, r *http.Request) {
			size, files := b.Size()
			writeJSON(w, http.StatusOK, map[string]any{"bytes": size, "files": files, "entries": b.List(), "downloads": b.Downloads()})
		})
		private.HandleFunc("DELETE /v1/blobs", func(w http.ResponseWriter, r *http.Request) {
			id := r.URL.Query().Get("id")
			if id == "" && r.URL.Query().Get("all") != "1" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give ?id=KEY_OR_DIGEST, or ?all=1 to remove everything"})
				return
			}
			writeJSON(w, http.StatusOK, map[string]int{"removed": b.Remove(id)})
		})
		private.HandleFunc("POST /v1/blobs/gc", func(w http.ResponseWriter, r *http.Request) {
			freed, err := b.GC()
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, map[string]int64{"freed_bytes": freed})
		})
	}
	if opts.Config != nil {
		private.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
			data, err := opts.Config()
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
				return
			}
			w.Header().Set("Content-Type", "application/yaml")
			w.Write(data)
		})
		private.HandleFunc("PUT /config", func(w http.ResponseWriter, r *http.Request) {
			data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxConfigBytes))
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				// Never a cut-off config: half an allowlist is not the allowlist.
				writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("config larger than %d MiB; nothing changed", maxConfigBytes>>20)})
				return
			}
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			dir := r.URL.Query().Get("dir")
			if dir != "" && !filepath.IsAbs(dir) {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("dir %q is not an absolute path; nothing changed", dir)})
				return
			}
			restartOnly, err := opts.Reload(data, dir)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]any{"error": "config refused; the running one stays",
					"errors": strings.Split(err.Error(), "\n")})
				return
			}
			if restartOnly == nil {
				restartOnly = []string{} // [] in the JSON, never null
			}
			writeJSON(w, http.StatusOK, map[string]any{"status": "config swapped in", "restart_only": restartOnly})
		})
	}
	if opts.Bans != nil {
		listBans := func(w http.ResponseWriter, r *http.Request) {
			list, err := opts.Bans.List(r.Context())
			if err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "ban list not readable: " + err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, list)
		}
		private.HandleFunc("GET /bans", listBans)
		private.HandleFunc("POST /bans", func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				Client   string `json:"client"`
				Duration string `json:"duration"`
				Reason   string `json:"reason"`
			}
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want JSON {\"client\": IP, \"duration\": \"1h\", \"reason\": ...}: " + err.Error()})
				return
			}
			client := req.Client
			ip, err := netip.ParseAddr(req.Client)
			if err == nil {
				client = ip.Unmap().String()
			} else if name, ok := strings.CutPrefix(req.Client, "client:"); ok && name != "" {
				err = nil // a named client (clients:), wherever it connects from
			}
			d, derr := time.ParseDuration(req.Duration)
			if err != nil || derr != nil || d <= 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "client must be an IP or client:NAME, and duration a positive Go duration (30m, 24h)"})
				return
			}
			if err := opts.Bans.Add(r.Context(), client, d, cmp.Or(req.Reason, "operator")); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "ban not stored: " + err.Error()})
				return
			}
			listBans(w, r)
		})
		private.HandleFunc("DELETE /bans/{client}", func(w http.ResponseWriter, r *http.Request) {
			lifted, err := opts.Bans.Remove(r.Context(), r.PathValue("client"))
			if err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "ban not lifted: " + err.Error()})
				return
			}
			if !lifted {
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "no ban for " + r.PathValue("client")})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"status": "ban lifted"})
		})
	}
	if opts.Purge != nil {
		private.HandleFunc("DELETE /v1/cache", func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if q.Get("host") == "" && q.Get("all") == "" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "host missing", "detail": "DELETE /v1/cache?host=HOST[&path=PREFIX], or ?all=1 for every host"})
				return
			}
			local, shared, err := opts.Purge(r.Context(), q.Get("host"), q.Get("path"))
			out := map[string]any{"removed": local, "shared_removed": shared}
			if err != nil {
				out["shared_error"] = err.Error()
			}
			writeJSON(w, http.StatusOK, out)
		})
	}
	if opts.Guard != nil {
		private.HandleFunc("GET /v1/halts", func(w http.ResponseWriter, r *http.Request) {
			halts := opts.Guard.Halts(time.Now())
			if halts == nil {
				halts = []guardrails.Halt{}
			}
			writeJSON(w, http.StatusOK, halts)
		})
		private.HandleFunc("POST /v1/halts", func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				Scope, Duration, Reason string
				Mode                    guardrails.HaltMode
			}
			if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want JSON {\"scope\": \"client:NAME\"|\"group:NAME\"|\"all\", \"duration\": \"1h\" (optional), \"reason\": ..., \"mode\": \"cancel-only\"|\"full\"}: " + err.Error()})
				return
			}
			if err := opts.HaltScope(req.Scope); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			h := guardrails.Halt{Scope: req.Scope, Mode: cmp.Or(req.Mode, guardrails.CancelOnly), Reason: cmp.Or(req.Reason, "operator"), Since: time.Now()}
			if h.Mode != guardrails.CancelOnly && h.Mode != guardrails.Full {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("mode %q: want cancel-only or full", h.Mode)})
				return
			}
			if req.Duration != "" {
				d, err := time.ParseDuration(req.Duration)
				if err != nil || d <= 0 {
					writeJSON(w, http.StatusBadRequest, map[string]string{"error": "duration must be a positive Go duration (30m, 24h)"})
					return
				}
				h.Until = h.Since.Add(d)
			}
			opts.Guard.Halt(h)
			opts.Log.Warn("trading halted", "scope", h.Scope, "mode", h.Mode, "reason", h.Reason, "until", h.Until)
			if opts.Halts != nil {
				if err := opts.Halts.Put(r.Context(), h); err != nil {
					// Held here all the same; the other instances do not know it.
					opts.Log.Error("the halt is not shared with the fleet", "scope", h.Scope, "error", err)
					writeJSON(w, http.StatusOK, map[string]any{"scope": h.Scope, "mode": h.Mode, "reason": h.Reason, "since": h.Since, "until": h.Until,
						"fleet_error": "held by this instance only: " + err.Error()})
					return
				}
			}
			writeJSON(w, http.StatusOK, h)
		})
		private.HandleFunc("DELETE /v1/halts", func(w http.ResponseWriter, r *http.Request) {
			scope := r.URL.Query().Get("scope")
			// The fleet first: a resume Redis cannot take changes nothing,
			// so that no instance keeps a halt the others lifted.
			if opts.Halts != nil {
				if err := opts.Halts.Remove(r.Context(), scope); err != nil {
					writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not resumed: the fleet's Redis did not answer (" + err.Error() + "); the halt holds everywhere"})
					return
				}
			}
			if !opts.Guard.Resume(scope) && opts.Halts == nil {
				writeJSON(w, http.StatusNotFound, map[string]string{"error": "no halt of " + scope})
				return
			}
			opts.Log.Warn("trading resumed", "scope", scope)
			writeJSON(w, http.StatusOK, map[string]string{"status": "resumed", "scope": scope})
		})
	}
	if opts.Tail != nil {
		private.HandleFunc("GET /v1/log", func(w http.ResponseWriter, r *http.Request) { serveLog(w, r, opts.Tail, s.stopping) })
	}
	if opts.Why != nil {
		private.HandleFunc("GET /v1/why", func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if q.Get("target") == "" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "target missing", "detail": "GET /v1/why?target=HOST[:PORT][&method=GET&path=/x&client=NAME]"})
				return
			}
			writeJSON(w, http.StatusOK, opts.Why(r.Context(), q.Get("target"), q.Get("method"), q.Get("path"), q.Get("client")))
		})
	}
	if opts.Pins != nil {
		private.HandleFunc("GET /dns/pins", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, opts.Pins.List())
		})
		private.HandleFunc("POST /dns/pins/{host}/accept", func(w http.ResponseWriter, r *http.Request) {
			pin, err := opts.Pins.Accept(r.PathValue("host"))
			switch {
			case errors.Is(err, resolve.ErrNoDisagreement):
				writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			case err != nil:
				writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
			default:
				writeJSON(w, http.StatusOK, pin)
			}
		})
	}
	protected := requireToken(opts.Token, private)
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := private.Handler(r); pattern == "" {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such endpoint: " + r.Method + " " + r.URL.Path})
			return
		}
		protected.ServeHTTP(w, r)
	}))
	s.srv = &http.Server{
		Handler:           http.NewCrossOriginProtection().Handler(mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug),
	}
	s.srv.RegisterOnShutdown(func() { close(s.stopping) })
	return s
}

// requireToken lets through requests carrying "Authorization: Bearer TOKEN".
func requireToken(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if token == "" || !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token (see DATA_DIR/admin.token)"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Serve serves on ln until ctx ends; then /healthz answers 503 draining
// until drained is closed (the proxy listeners finished) or grace passed,
// and the admin listener shuts down within grace.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration, drained <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Draining: /healthz says so until the proxy listeners are done.
	s.draining.Store(true)
	select {
	case <-drained:
	case <-time.After(grace):
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveLog writes the access lines kept, as JSON lines, and with
// ?follow=1 the new ones as they come until the client leaves or sluice
// stops.
func serveLog(w http.ResponseWriter, r *http.Request, tail *obs.Tail, stopping <-chan struct{}) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	if r.URL.Query().Get("follow") == "" {
		for _, l := range tail.Recent() {
			w.Write(l)
		}
		return
	}
	recent, lines, dropped, stop := tail.Follow()
	defer stop()
	rc := http.NewResponseController(w)
	for _, l := range recent {
		w.Write(l)
	}
	rc.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-stopping:
			return
		case l := <-lines:
			if n := dropped(); n > 0 {
				w.Write(obs.DroppedLine(n))
			}
			if _, err := w.Write(l); err != nil {
				return
			}
			// Whatever else is queued goes in the same write.
			for more := len(lines); more > 0; more-- {
				w.Write(<-lines)
			}
			if rc.Flush() != nil {
				return
			}
		}
	}
}
