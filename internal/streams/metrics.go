package streams

import (
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

// Metrics are the streams' Prometheus series, labelled by host.
type Metrics struct {
	upstreamConns    *prometheus.GaugeVec
	upstreamOpened   *prometheus.CounterVec
	upstreamMessages *prometheus.CounterVec
	subscriptions    *prometheus.GaugeVec
	clients          *prometheus.GaugeVec
	fanout           *prometheus.CounterVec
	dropped          *prometheus.CounterVec
	rollovers        *prometheus.CounterVec
	lost             *prometheus.CounterVec
	delay            *prometheus.HistogramVec
}

// NewMetrics registers the streams' series with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		upstreamConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sluice_streams_upstream_connections",
			Help: "Upstream WebSocket connections open for shared market streams."}, []string{"host"}),
		upstreamOpened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_streams_upstream_dials_total",
			Help: "Upstream WebSocket connections sluice opened for shared streams, by result (ok, failed)."}, []string{"host", "result"}),
		upstreamMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_streams_upstream_messages_total",
			Help: "Messages received on sluice's upstream stream connections."}, []string{"host"}),
		subscriptions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sluice_streams_subscriptions",
			Help: "Distinct streams subscribed upstream, each once however many clients want it."}, []string{"host"}),
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sluice_streams_clients",
			Help: "Client WebSocket sessions open: shared (served from sluice's subscriptions) or spliced (a private stream, or a host without a stream protocol)."}, []string{"host", "kind"}),
		fanout: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_streams_messages_fanned_out_total",
			Help: "Stream events queued for clients: one per event and client."}, []string{"host"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_streams_clients_dropped_total",
			Help: "Clients sluice closed, by reason (slow: the send queue filled up)."}, []string{"host", "reason"}),
		rollovers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_streams_rollovers_total",
			Help: "Upstream stream connections replaced, by cause (lifetime, serverShutdown)."}, []string{"host", "cause"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sluice_streams_upstream_lost_total",
			Help: "Upstream stream connections lost without notice and redialed, by cause (dropped: closed or reset; silent: no answer to a ping after streams.silence)."}, []string{"host", "cause"}),
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sluice_streams_delivery_delay_seconds",
			Help: "Time from reading a stream event from the exchange to writing it to a client's connection, per event and client: the delay sluice adds.",
			// Sub-millisecond buckets: the goal is under 1 ms.
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1}}, []string{"host"}),
	}
	return m, metrics.Register(reg, m.upstreamConns, m.upstreamOpened, m.upstreamMessages, m.subscriptions, m.clients, m.fanout, m.dropped, m.rollovers, m.lost, m.delay)
}

// Declare creates host's series at zero, so that alerts on them work from
// the first scrape.
func (hs *Hubs) Declare(host string) {
	m := hs.metrics
	m.upstreamConns.WithLabelValues(host)
	m.subscriptions.WithLabelValues(host)
	m.upstreamMessages.WithLabelValues(host)
	m.fanout.WithLabelValues(host)
	m.delay.WithLabelValues(host)
	m.dropped.WithLabelValues(host, "slow")
	for _, r := range []string{"ok", "failed"} {
		m.upstreamOpened.WithLabelValues(host, r)
	}
	for _, k := range []string{"shared", "spliced"} {
		m.clients.WithLabelValues(host, k)
	}
	for _, c := range []string{"lifetime", "serverShutdown"} {
		m.rollovers.WithLabelValues(host, c)
	}
	for _, c := range []string{"dropped", "silent"} {
		m.lost.WithLabelValues(host, c)
	}
}
