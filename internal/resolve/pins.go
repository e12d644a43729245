package resolve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/atomicfile"
	"sluice/internal/dialer"
	"sluice/internal/metrics"
)

// Pin is the answer sluice uses for a host, and what a later resolution
// said when it disagreed.
type Pin struct {
	Host  string       `json:"host"`
	Addrs []netip.Addr `json:"addrs"`
	Since time.Time    `json:"since"`
	// Disagreeing is the latest answer that shares no address with Addrs;
	// empty while the answers agree. sluice does not follow it until an
	// operator accepts it.
	Disagreeing []netip.Addr `json:"disagreeing,omitempty"`
	CheckedAt   time.Time    `json:"checked_at,omitzero"`
}

// Pins holds the pins, persisted in a file of the data dir. It is safe
// for concurrent use.
type Pins struct {
	path string
	log  *slog.Logger
	now  func() time.Time

	mu   sync.Mutex
	pins map[string]*Pin

	count, disagreeing prometheus.GaugeFunc
	disagreements      prometheus.Counter
}

// OpenPins loads the pins in path (none yet: an empty set).
func OpenPins(path string, log *slog.Logger, reg prometheus.Registerer) (*Pins, error) {
	p := &Pins{path: path, log: log, now: time.Now, pins: map[string]*Pin{}}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		var list []*Pin
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, x := range list {
			p.pins[x.Host] = x
		}
	}
	p.count = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "dns", Name: "pins",
		Help: "Hosts whose upstream addresses are pinned."}, func() float64 { return float64(len(p.List())) })
	p.disagreeing = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "sluice", Subsystem: "dns", Name: "pins_disagreeing",
		Help: "Pinned hosts whose latest resolution disagrees with the pin (sluice dns pins; sluice dns accept HOST)."},
		func() float64 {
			n := 0
			for _, x := range p.List() {
				if len(x.Disagreeing) > 0 {
					n++
				}
			}
			return float64(n)
		})
	p.disagreements = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "dns", Name: "pin_disagreements_total",
		Help: "Re-resolutions of a pinned host that shared no address with its pin."})
	return p, metrics.Register(reg, p.count, p.disagreeing, p.disagreements)
}

// Pinned returns the pinned addresses of host.
func (p *Pins) Pinned(host string) ([]netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	x, ok := p.pins[host]
	if !ok {
		return nil, false
	}
	return x.Addrs, true
}

// Pin records host's first good answer; a host already pinned keeps its pin.
func (p *Pins) Pin(host string, addrs []netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pins[host]; ok {
		return
	}
	p.pins[host] = &Pin{Host: host, Addrs: slices.Clone(addrs), Since: p.now().UTC()}
	p.log.Info("dns pin", "host", host, "addrs", fmt.Sprint(addrs))
	p.saveLocked()
}

// List returns a copy of every pin, by host.
func (p *Pins) List() []Pin {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Pin, 0, len(p.pins))
	for _, h := range slices.Sorted(maps.Keys(p.pins)) {
		out = append(out, *p.pins[h])
	}
	return out
}

// ErrNoDisagreement is returned by Accept for a host whose answers agree.
var ErrNoDisagreement = errors.New("its latest resolution agrees with the pin: nothing to accept")

// Accept moves host's pin to the disagreeing answer, as an operator who
// checked it decided.
func (p *Pins) Accept(host string) (Pin, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	x, ok := p.pins[host]
	if !ok {
		return Pin{}, fmt.Errorf("%s is not pinned", host)
	}
	if len(x.Disagreeing) == 0 {
		return Pin{}, fmt.Errorf("%s: %w", host, ErrNoDisagreement)
	}
	p.log.Warn("dns pin moved by an operator", "host", host, "from", fmt.Sprint(x.Addrs), "to", fmt.Sprint(x.Disagreeing))
	x.Addrs, x.Disagreeing, x.Since = x.Disagreeing, nil, p.now().UTC()
	p.saveLocked()
	return *x, nil
}

// Recheck resolves every pinned host again with r and records, and warns
// of, each answer that shares no address with the pin.
func (p *Pins) Recheck(ctx context.Context, r dialer.Resolver) {
	for _, x := range p.List() {
		addrs, err := r.LookupNetIP(ctx, "ip", x.Host)
		if err != nil {
			p.log.Warn("dns recheck failed; the pin stays", "host", x.Host, "error", err.Error())
			continue
		}
		p.checked(x.Host, addrs)
	}
	p.mu.Lock()
	p.saveLocked()
	p.mu.Unlock()
}

func (p *Pins) checked(host string, addrs []netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	x, ok := p.pins[host]
	if !ok {
		return
	}
	x.CheckedAt = p.now().UTC()
	if slices.ContainsFunc(addrs, func(a netip.Addr) bool { return slices.Contains(x.Addrs, a) }) {
		x.Disagreeing = nil
	} else {
		p.disagreements.Inc()
		x.Disagreeing = slices.Clone(addrs)
		p.log.Warn("dns answer disagrees with the pin; the pin stays (sluice dns accept HOST moves it)",
			"host", host, "pinned", fmt.Sprint(x.Addrs), "answer", fmt.Sprint(addrs))
	}
}

// saveLocked writes the pins; a failure is logged, the pins in memory hold.
func (p *Pins) saveLocked() {
	list := make([]*Pin, 0, len(p.pins))
	for _, h := range slices.Sorted(maps.Keys(p.pins)) {
		list = append(list, p.pins[h])
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err == nil {
		err = atomicfile.Write(p.path, data, 0o600)
	}
	if err != nil {
		p.log.Error("dns pins not saved", "path", p.path, "error", err.Error())
	}
}

// Keep runs Recheck with r now and every interval until ctx ends.
func (p *Pins) Keep(ctx context.Context, r dialer.Resolver, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.Recheck(ctx, r)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
