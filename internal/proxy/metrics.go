package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/decision"
	"sluice/internal/metrics"
)

type proxyMetrics struct {
	sessions *prometheus.GaugeVec
	// The two children of sessions, looked up once, not per connection.
	tunnels, intercepts prometheus.Gauge
	upstreamErrors      *prometheus.CounterVec
	handshakeErrors     prometheus.Counter
	bodyBytes           prometheus.Gauge
	bodiesOverMemory    prometheus.Counter
	connsRefused        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*proxyMetrics, error) {
	m := &proxyMetrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "sessions",
			Help: "Open client connections taken over from CONNECT, by kind (tunnel, intercept).",
		}, []string{"kind"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "upstream_errors_total",
			Help: "Failures to reach an upstream, by RFC 9209 error type.",
		}, []string{"kind"}),
		handshakeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "client_handshake_errors_total",
			Help: "Intercepted CONNECTs whose client TLS handshake failed (often: the client does not trust the CA).",
		}),
		bodyBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "buffered_body_bytes",
			Help: "Memory reserved by request bodies read whole before forwarding (at most limits.buffered_bodies).",
		}),
		bodiesOverMemory: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "bodies_over_memory_total",
			Help: "Request bodies not read whole because limits.buffered_bodies was reached: streamed instead, or refused with 503 where a rule must read them whole.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sluice", Subsystem: "proxy", Name: "connections_refused_total",
			Help: "Client connections closed at once because their address held limits.connections_per_client already, by listener.",
		}, []string{"listener"}),
	}
	if err := metrics.Register(reg, m.sessions, m.upstreamErrors, m.handshakeErrors, m.bodyBytes, m.bodiesOverMemory, m.connsRefused); err != nil {
		return nil, err
	}
	m.tunnels = m.sessions.WithLabelValues(decision.Tunnel.String())
	m.intercepts = m.sessions.WithLabelValues(decision.Intercept.String())
	for _, kind := range upstreamErrorKinds {
		m.upstreamErrors.WithLabelValues(kind)
	}
	return m, nil
}

// The RFC 9209 error types classify reports, each a series of
// sluice_proxy_upstream_errors_total from the first scrape.
const (
	psIPProhibited    = "destination_ip_prohibited"
	psDNSError        = "dns_error"
	psDNSTimeout      = "dns_timeout"
	psTLSCertificate  = "tls_certificate_error"
	psConnRefused     = "connection_refused"
	psConnTimeout     = "connection_timeout"
	psResponseTimeout = "http_response_timeout"
	psConnTerminated  = "connection_terminated"
	psTLSProtocol     = "tls_protocol_error"
	psUnavailable     = "destination_unavailable"
)

var upstreamErrorKinds = []string{psIPProhibited, psDNSError, psDNSTimeout, psTLSCertificate, psConnRefused, psConnTimeout, psResponseTimeout, psConnTerminated, psTLSProtocol, psUnavailable}
