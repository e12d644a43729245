// Package admin serves sluice's admin listener (loopback by default):
//
//	GET    /healthz           {"status":"ok"} while the proxy runs
//	GET    /metrics           Prometheus metrics of every component
//	GET    /ca.pem            the CA certificate clients must trust (public)
//	GET    /v1/blobs          the blob store: size, files, entries
//	DELETE /v1/blobs?id=ID    remove the entries with that URL key or digest
//	DELETE /v1/blobs?all=1    remove every entry
//	POST   /v1/blobs/gc       remove unreferenced and temporary files
//
// Errors are JSON {"error": "..."}.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"sluice/internal/blobs"
)

// Options are what New needs.
type Options struct {
	Gatherer  prometheus.Gatherer
	CACertPEM []byte
	Log       *slog.Logger
	// Blobs is the blob store, nil if off.
	Blobs *blobs.Store
}

// Server is the admin HTTP server.
type Server struct {
	srv *http.Server
}

// New builds the admin server; Serve starts it.
func New(opts Options) *Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(opts.Log.Handler(), slog.LevelError),
	}))
	mux.HandleFunc("GET /ca.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Header().Set("Content-Disposition", `attachment; filename="sluice-ca.pem"`)
		w.Write(opts.CACertPEM)
	})
	if b := opts.Blobs; b != nil {
		mux.HandleFunc("GET /v1/blobs", func(w http.ResponseWriter, r *http.Request) {
			size, files := b.Size()
			writeJSON(w, http.StatusOK, map[string]any{"bytes": size, "files": files, "entries": b.List()})
		})
		mux.HandleFunc("DELETE /v1/blobs", func(w http.ResponseWriter, r *http.Request) {
			id := r.URL.Query().Get("id")
			if id == "" && r.URL.Query().Get("all") != "1" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give ?id=KEY_OR_DIGEST, or ?all=1 to remove everything"})
				return
			}
			writeJSON(w, http.StatusOK, map[string]int{"removed": b.Remove(id)})
		})
		mux.HandleFunc("POST /v1/blobs/gc", func(w http.ResponseWriter, r *http.Request) {
			freed, err := b.GC()
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, map[string]int64{"freed_bytes": freed})
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return &Server{srv: &http.Server{
		Handler:           http.NewCrossOriginProtection().Handler(mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug),
	}}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Serve serves on ln until ctx ends, then shuts down within grace.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
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
