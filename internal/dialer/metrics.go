package dialer

import (
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/metrics"
)

// CountRefusals registers sluice_dialer_refused_addresses_total{class} on
// reg (nil: unregistered) and returns an OnRefuse that counts into it.
func CountRefusals(reg prometheus.Registerer) (func(Class), error) {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "dialer", Name: "refused_addresses_total",
		Help: "Upstream addresses refused by the SSRF guard, by address class.",
	}, []string{"class"})
	if err := metrics.Register(reg, refused); err != nil {
		return nil, err
	}
	for c := Loopback; c <= Reserved; c++ {
		refused.WithLabelValues(c.String()) // every class from the first scrape
	}
	return func(c Class) { refused.WithLabelValues(c.String()).Inc() }, nil
}
