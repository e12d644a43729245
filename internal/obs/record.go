// Package obs holds what every request shares for observability: the
// canonical access-log line (one per request), its metrics, panic recovery
// and the JSON error answers that sluice itself writes.
//
// Metrics: sluice_proxy_requests_total{mode,decision,code},
// sluice_proxy_request_duration_seconds{mode}.
package obs

import (
	"context"
	"time"
)

// Record is what the access log writes for one request. obs.AccessLog puts
// it in the request context; inner stages fill it in with RecordFrom.
type Record struct {
	ClientIP     string
	Mode         string // forward, connect, mitm
	Method       string
	Host         string // target host:port
	Path         string // without the query unless log.queries is set
	Decision     string // deny, tunnel, intercept
	Rule         string // the matching hosts key
	Reason       string
	Status       int
	Cache        string
	UpstreamAddr string
	BytesIn      int64
	BytesOut     int64
	Start        time.Time
	// Err is the operator-facing detail of a failure; never sent to clients.
	Err error
}

type recordKey struct{}

// WithRecord returns ctx carrying rec.
func WithRecord(ctx context.Context, rec *Record) context.Context {
	return context.WithValue(ctx, recordKey{}, rec)
}

// RecordFrom returns the request's Record, or a throwaway one when the
// request did not pass through AccessLog (so callers never check for nil).
func RecordFrom(ctx context.Context) *Record {
	if rec, ok := ctx.Value(recordKey{}).(*Record); ok {
		return rec
	}
	return &Record{}
}
