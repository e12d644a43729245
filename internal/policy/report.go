package policy

import (
	"log/slog"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/decision"
	"sluice/internal/metrics"
)

// ReportMsg is the message of the log line report mode writes for each
// host, port and reason it lets through; `sluice hosts suggest` reads it.
const ReportMsg = "report: enforce would refuse"

// reportMemory bounds how many host, port and reason triples are
// remembered as logged; one forgotten is logged again, once.
const reportMemory = 10_000

// Reports notes what report mode lets through: one log line per host,
// port and reason, and a count of every such request. It outlives
// reloads, so a reload does not log every host again. It is safe for
// concurrent use; a nil *Reports notes nothing.
//
// Metrics: sluice_policy_reported_total.
type Reports struct {
	log    *slog.Logger
	logged *lru.Cache[string, struct{}]
	passed prometheus.Counter
}

// NewReports returns a Reports that logs to log and registers its counter on reg.
func NewReports(log *slog.Logger, reg prometheus.Registerer) (*Reports, error) {
	logged, err := lru.New[string, struct{}](reportMemory)
	if err != nil {
		return nil, err
	}
	r := &Reports{log: log, logged: logged, passed: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "sluice", Subsystem: "policy", Name: "reported_total",
		Help: "Requests and CONNECTs that report mode let through and enforce mode would refuse.",
	})}
	return r, metrics.Register(reg, r.passed)
}

func (r *Reports) note(rec *decision.Record, d Decision) {
	if r == nil {
		return
	}
	r.passed.Inc()
	key := d.Target.String() + " " + d.Report
	if ok, _ := r.logged.ContainsOrAdd(key, struct{}{}); ok {
		return
	}
	r.log.Warn(ReportMsg, "host", d.Target.Host, "port", d.Target.Port, "scheme", rec.Scheme.String(),
		"entry", d.Rule(), "reason", d.Report, "fix", d.Fix, "client_ip", rec.ClientIP, "mode", rec.Entry.String())
}
