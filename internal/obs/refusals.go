package obs

import (
	"strings"
	"sync"
	"time"

	"sluice/internal/decision"
)

// Refusal is one request a stage refused, as the dashboard shows it: no
// query string, no header, nothing secret.
type Refusal struct {
	Time     time.Time `json:"time"`
	ClientIP string    `json:"client"`
	// Name is the client's name from clients:, once it proved it.
	Name    string `json:"client_name,omitempty"`
	Host    string `json:"host"`
	Method  string `json:"method"`
	Path    string `json:"path"`
	Stage   string `json:"stage"`
	Reason  string `json:"reason"`
	RuleSet string `json:"rule_set,omitempty"`
	Check   string `json:"check,omitempty"`
	Status  int    `json:"status"`
}

// maxShown bounds what a refusal keeps of the client's method and path: a
// hostile client's megabyte of path is not kept, a hundred times over.
const maxShown = 256

func clip(s string) string {
	if len(s) <= maxShown {
		return s
	}
	return strings.ToValidUTF8(s[:maxShown], "") + "…"
}

// keptRefusals is how many of the last refusals are kept.
const keptRefusals = 100

// refusals is a ring of the last refusals.
type refusals struct {
	mu   sync.Mutex
	ring [keptRefusals]Refusal
	next int
	n    int
}

func (rs *refusals) add(rec *decision.Record) {
	x := Refusal{Time: rec.Start, ClientIP: rec.ClientIP, Name: rec.Client, Method: clip(rec.Method), Path: clip(rec.Path),
		Stage: rec.RefusedBy.String(), Reason: rec.Reason, RuleSet: rec.RuleSet, Check: rec.Check, Status: rec.Status}
	if rec.Target.Host != "" {
		x.Host = rec.Target.String()
	}
	rs.mu.Lock()
	rs.ring[rs.next] = x
	rs.next = (rs.next + 1) % keptRefusals
	rs.n = min(rs.n+1, keptRefusals)
	rs.mu.Unlock()
}

// Refusals returns the last refusals, the newest first.
func (m *Metrics) Refusals() []Refusal {
	rs := &m.refusals
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := make([]Refusal, 0, rs.n)
	for i := 1; i <= rs.n; i++ {
		out = append(out, rs.ring[(rs.next-i+keptRefusals)%keptRefusals])
	}
	return out
}
