package throttle

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

type throttleMetrics struct {
	queue      *prometheus.GaugeVec
	waits      *prometheus.HistogramVec
	avail      *prometheus.GaugeVec
	limitedVec *prometheus.CounterVec
	rejects    *prometheus.CounterVec
	drift      *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*throttleMetrics, error) {
	m := &throttleMetrics{
		queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "throttle", Name: "queue_length",
			Help: "Requests waiting for upstream budget."}, []string{"budget"}),
		waits: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "sluice", Subsystem: "throttle", Name: "wait_seconds",
			Help:    "Time requests waited for upstream budget.",
			Buckets: []float64{0, .001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"budget"}),
		avail: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "throttle", Name: "available",
			Help: "Budget left, in weight units, at the last request (of the last key used)."}, []string{"budget"}),
		limitedVec: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "throttle", Name: "upstream_limited_total",
			Help: "429 and 418 answers from upstreams."}, []string{"budget", "status"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "throttle", Name: "rejected_total",
			Help: "Requests answered 429 by sluice after max_wait without budget."}, []string{"budget"}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "throttle", Name: "drift",
			Help: "For a budget fed back by the upstream's headers: what sluice had counted spent minus what the upstream reported used, at the last report (negative: the upstream counted more)."}, []string{"budget"}),
	}
	return m, metrics.Register(reg, m.queue, m.waits, m.avail, m.limitedVec, m.rejects, m.drift)
}

// declare creates budget's series, so that they exist from the first scrape.
func (m *throttleMetrics) declare(budget string) {
	m.queue.WithLabelValues(budget)
	m.waits.WithLabelValues(budget)
	m.avail.WithLabelValues(budget)
	m.rejects.WithLabelValues(budget)
	m.limitedVec.WithLabelValues(budget, "429")
	m.limitedVec.WithLabelValues(budget, "418")
}

func (m *throttleMetrics) queued(budget string, d float64) { m.queue.WithLabelValues(budget).Add(d) }
func (m *throttleMetrics) wait(budget string, d time.Duration) {
	m.waits.WithLabelValues(budget).Observe(d.Seconds())
}
func (m *throttleMetrics) available(budget string, v float64) { m.avail.WithLabelValues(budget).Set(v) }
func (m *throttleMetrics) rejected(budget string)             { m.rejects.WithLabelValues(budget).Inc() }
func (m *throttleMetrics) drifted(budget string, v float64)   { m.drift.WithLabelValues(budget).Set(v) }
func (m *throttleMetrics) limited(budget string, status int) {
	m.limitedVec.WithLabelValues(budget, strconv.Itoa(status)).Inc()
}
