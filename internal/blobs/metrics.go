package blobs

import (
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

type storeMetrics struct {
	requests  *prometheus.CounterVec
	downloads *prometheus.CounterVec
	evictions prometheus.Counter
	bytes     prometheus.Gauge
	files     prometheus.Gauge
	scrubbed  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*storeMetrics, error) {
	m := &storeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "blobs", Name: "requests_total",
			Help: "Requests for immutable files by result: hit (from disk), miss (downloaded), bypass."}, []string{"result"}),
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "blobs", Name: "downloads_total",
			Help: "Upstream downloads of blobs by outcome: stored, failed (upstream error, digest mismatch, disk), not_ok (non-200)."}, []string{"outcome"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "blobs", Name: "evictions_total",
			Help: "Files evicted to stay within blobs.max_bytes."}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "blobs", Name: "bytes", Help: "Bytes of files in the blob store."}),
		files: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "blobs", Name: "files", Help: "Files in the blob store."}),
		scrubbed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "blobs", Name: "scrubbed_total",
			Help: "Files the scrub hashed, by result: ok, or dropped (missing, or content not matching its digest)."}, []string{"result"}),
	}
	for _, r := range []string{"hit", "miss", "bypass"} {
		m.requests.WithLabelValues(r) // every series from the first scrape
	}
	for _, o := range []string{"stored", "failed", "not_ok"} {
		m.downloads.WithLabelValues(o)
	}
	m.scrubbed.WithLabelValues("ok")
	m.scrubbed.WithLabelValues("dropped")
	return m, metrics.Register(reg, m.requests, m.downloads, m.evictions, m.bytes, m.files, m.scrubbed)
}

func (m *storeMetrics) result(r string) { m.requests.WithLabelValues(r).Inc() }

func (m *storeMetrics) update(bytes int64, files int) {
	m.bytes.Set(float64(bytes))
	m.files.Set(float64(files))
}

func (m *storeMetrics) download(body bool, err error) {
	switch {
	case !body:
		m.downloads.WithLabelValues("not_ok").Inc()
	case err != nil:
		m.downloads.WithLabelValues("failed").Inc()
	default:
		m.downloads.WithLabelValues("stored").Inc()
	}
}
