// Package metrics holds what sluice's Prometheus collectors share. Every
// component builds its own collectors and registers them on the registry it
// is given, never on a global one.
package metrics

import "github.com/prometheus/client_golang/prometheus"

// Register registers cs on reg; a nil reg leaves them unregistered (still
// usable, just not exported), which is what tests that do not read metrics use.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
