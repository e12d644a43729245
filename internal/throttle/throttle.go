// Package throttle keeps every upstream inside its real budget, shared by
// all the clients behind sluice: a request that would overrun the budget
// waits in a queue (fair between clients) up to max_wait, and is then
// answered 429 by sluice without going upstream. After every response the
// budget re-syncs to the upstream's own quota headers; a 429 or 418 pauses
// it for Retry-After. Cache hits never reach this stage.
//
// Config keys: throttle.max_wait; per host: throttle (or the profile's):
// budget, model (window | token_bucket | leaky_bucket), limit, window,
// rate, burst, capacity, leak_rate, key, key_headers, max_wait,
// default_weight, weights, feedback.
//
// Metrics: sluice_throttle_queue_length{budget}, sluice_throttle_wait_seconds{budget},
// sluice_throttle_available{budget}, sluice_throttle_upstream_limited_total{budget,status},
// sluice_throttle_rejected_total{budget}.
package throttle

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/obs"
	"sluice/internal/store"
)

// maxInstances caps the budgets kept for client-derived keys (API keys,
// client IPs); the least recently used idle one goes first.
const maxInstances = 10000

// Limiter holds every budget. It is safe for concurrent use.
type Limiter struct {
	log     *slog.Logger
	now     func() time.Time
	metrics *throttleMetrics
	meters  store.Meters
	ctx     context.Context // of the meters' calls that no request makes

	mu        sync.Mutex // guards instances only; each instance has its own
	instances *simplelru.LRU[string, *instance]
}

// New returns a Limiter that counts in meters (nil: this process's
// memory); now is the clock (nil: time.Now).
func New(log *slog.Logger, now func() time.Time, reg prometheus.Registerer, meters store.Meters) (*Limiter, error) {
	if now == nil {
		now = time.Now
	}
	if meters == nil {
		meters = store.MemoryMeters{}
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	// No eviction by the LRU itself: evict drops idle budgets only.
	instances, err := simplelru.NewLRU[string, *instance](math.MaxInt, nil)
	if err != nil {
		return nil, err
	}
	return &Limiter{log: log, now: now, metrics: m, meters: meters, ctx: context.Background(), instances: instances}, nil
}

// Specs are a host entry's throttles, tried in order by request path.
type Specs []*Spec

// PickAll returns the throttles r spends: the first whose path matches
// it and, while the one picked stacks, the next that matches too.
func (ss Specs) PickAll(r *http.Request) Specs {
	var out Specs
	for i, s := range ss {
		if s.path != nil && !s.path.MatchString(r.URL.Path) {
			continue
		}
		if out == nil {
			out = ss[i : i+1 : i+1] // the common case: one, no allocation
		} else {
			out = append(out, s)
		}
		if !s.cfg.Stack {
			break
		}
	}
	return out
}

// CompileAll compiles a list of throttles (a profile's); name is the
// budget name of those that name none.
func CompileAll(ts []config.Throttle, name string, defaultMaxWait time.Duration) (Specs, error) {
	var out Specs
	for i := range ts {
		s, err := Compile(&ts[i], name, defaultMaxWait)
		if err != nil {
			return nil, config.Under(err, strconv.Itoa(i))
		}
		out = append(out, s)
	}
	return out, nil
}

// Spec is one compiled throttle. It is immutable.
type Spec struct {
	path          *regexp.Regexp // nil: every path
	name          string
	cfg           config.Throttle
	maxWait       time.Duration
	weights       []weight
	defaultWeight float64
	feedback      feedbacks
	key           budgetKey
	meter         store.MeterSpec
}

// feedbacks is the set of quota signals a budget reads (throttle.feedback),
// parsed once by Compile.
type feedbacks uint8

const (
	feedbackBinance feedbacks = 1 << iota
	feedbackShopify
	feedbackShopifyGraphQL
	feedbackRateLimit
	feedbackEtsySecond
	feedbackEtsyDay
)

var feedbackNames = map[string]feedbacks{"binance": feedbackBinance, "shopify": feedbackShopify, "shopify_graphql": feedbackShopifyGraphQL,
	"ratelimit": feedbackRateLimit, "etsy_second": feedbackEtsySecond, "etsy_day": feedbackEtsyDay}

func (f feedbacks) has(g feedbacks) bool { return f&g != 0 }

// budgetKey is how a budget is split (throttle.key), parsed once by Compile.
type budgetKey uint8

const (
	keyBudget budgetKey = iota
	keyHost
	keyClient
	keyClientName
	keyAPIKey
	keyHostAPIKey
)

var budgetKeys = map[string]budgetKey{"": keyBudget, "budget": keyBudget, "host": keyHost, "client": keyClient, "client_name": keyClientName,
	"api_key": keyAPIKey, "host_api_key": keyHostAPIKey}

type weight struct {
	prefix string
	re     *regexp.Regexp
	rule   config.WeightRule
}

// Compile builds the Spec of t (validated by config); name is the budget
// name when t names none. A nil t gives a nil Spec: no budget.
func Compile(t *config.Throttle, name string, defaultMaxWait time.Duration) (*Spec, error) {
	if t == nil {
		return nil, nil
	}
	s := &Spec{name: name, cfg: *t, maxWait: defaultMaxWait, defaultWeight: 1}
	switch t.Model {
	case "window":
		s.meter = store.MeterSpec{Model: store.Window, Limit: t.Limit, Window: t.Window.D()}
	case "leaky_bucket":
		s.meter = store.MeterSpec{Model: store.Bucket, Limit: t.Capacity, Rate: t.LeakRate}
	default:
		s.meter = store.MeterSpec{Model: store.Bucket, Limit: t.Burst, Rate: t.Rate}
	}
	if t.Budget != "" {
		s.name = t.Budget
	}
	if t.MaxWait != nil {
		s.maxWait = t.MaxWait.D()
	}
	if t.DefaultWeight > 0 {
		s.defaultWeight = t.DefaultWeight
	}
	if t.PathRegex != "" {
		re, err := config.FoldRegexp(t.PathRegex)
		if err != nil {
			return nil, config.Under(err, "path_regex")
		}
		s.path = re
	}
	for _, name := range t.Feedback {
		f, ok := feedbackNames[name]
		if !ok {
			return nil, config.Under(fmt.Errorf("unknown feedback %q", name), "feedback")
		}
		s.feedback |= f
	}
	key, ok := budgetKeys[t.Key]
	if !ok {
		return nil, config.Under(fmt.Errorf("unknown key %q", t.Key), "key")
	}
	s.key = key
	for i, w := range t.Weights {
		cw := weight{prefix: w.Path, rule: w}
		if w.PathRegex != "" {
			re, err := config.FoldRegexp(w.PathRegex)
			if err != nil {
				return nil, config.Under(err, "weights", strconv.Itoa(i), "path_regex")
			}
			cw.re = re
		}
		s.weights = append(s.weights, cw)
	}
	return s, nil
}

// Name is the spec's budget name.
func (s *Spec) Name() string { return s.name }

// Cost returns what r weighs under the spec's weight rules. Paths compare
// ignoring case, as budgets are picked: a request must not weigh less
// upstream than its spelling suggests to sluice.
func (s *Spec) Cost(r *http.Request) float64 {
	var q url.Values
	p := r.URL.Path
	for _, w := range s.weights {
		if w.re != nil && !w.re.MatchString(p) || w.re == nil && !(len(p) >= len(w.prefix) && strings.EqualFold(p[:len(w.prefix)], w.prefix)) {
			continue
		}
		if w.rule.Param == "" {
			return w.rule.Weight
		}
		if q == nil {
			q = r.URL.Query()
		}
		if cost, ok := ruleCost(w.rule, q); ok {
			return cost
		}
	}
	return s.defaultWeight
}

// ruleCost is the weight of a parameter-dependent rule; ok is false when
// the rule does not apply (the parameter is absent and nothing stands in).
func ruleCost(rule config.WeightRule, q url.Values) (cost float64, ok bool) {
	v, present := q[rule.Param], q.Has(rule.Param)
	var n float64
	switch {
	case !present && rule.Absent > 0:
		return rule.Absent, true
	case !present && rule.Default > 0:
		n = rule.Default
	case !present:
		return 0, false
	case rule.List:
		var items []json.RawMessage
		if json.Unmarshal([]byte(v[0]), &items) != nil {
			n = float64(strings.Count(v[0], ",") + 1)
		} else {
			n = float64(len(items))
		}
	default:
		f, err := strconv.ParseFloat(v[0], 64)
		if err != nil {
			f = rule.Default
		}
		n = f
	}
	if len(rule.Steps) == 0 {
		return rule.Weight, true
	}
	for _, s := range rule.Steps {
		if n <= s.Max {
			return s.Weight, true
		}
	}
	return rule.Steps[len(rule.Steps)-1].Weight, true
}

// Lease is one request's claim on a budget; the forwarder reports the
// upstream's answer to it.
type Lease struct {
	l    *Limiter
	spec *Spec
	in   *instance
	// Waited is how long the request queued.
	Waited time.Duration
	done   bool // observed or released; guarded by the Limiter's lock
}

// Declare creates the metric series of specs' budgets, so that alerts on
// them work from the first scrape, before a request has spent any.
func (l *Limiter) Declare(specs Specs) {
	for _, s := range specs {
		l.metrics.declare(s.name)
		if s.feedback != 0 {
			l.metrics.drift.WithLabelValues(s.name)
		}
	}
}

// Acquire waits until r's cost fits the budget of spec for host. It fails
// with ErrTimeout after max_wait, at once when the budget cannot have it
// within max_wait, or with the context's error.
func (l *Limiter) Acquire(ctx context.Context, spec *Spec, host string, r *http.Request) (*Lease, error) {
	in := l.instance(spec, host, r)
	waited, err := in.acquire(ctx, clientOf(r), spec.Cost(r), spec.maxWait)
	l.metrics.wait(spec.name, waited)
	if err != nil {
		if err == ErrTimeout {
			l.metrics.rejected(spec.name)
		}
		return nil, err
	}
	in.mu.Lock()
	in.report(l.now())
	in.mu.Unlock()
	return &Lease{l: l, spec: spec, in: in, Waited: waited}, nil
}

// RetryAfter is how long a refused client should wait: until the budget
// is unpaused, or one window or refill of a request's cost.
func (l *Limiter) RetryAfter(spec *Spec, host string, r *http.Request) time.Duration {
	in := l.instance(spec, host, r)
	in.mu.Lock()
	defer in.mu.Unlock()
	now := l.now()
	d, err := in.m.Wait(l.ctx, now, min(spec.Cost(r), in.m.Capacity()))
	if err != nil {
		d = meterRetry
	}
	if p := in.pausedUntil.Sub(now); p > d {
		d = p
	}
	return max(d, time.Second)
}

func clientOf(r *http.Request) string { return decision.ClientIP(r) }

// instance returns the budget for spec, host and r's key, creating it.
func (l *Limiter) instance(spec *Spec, host string, r *http.Request) *instance {
	key := spec.name + "|" + spec.keyPart(host, r)
	l.mu.Lock()
	defer l.mu.Unlock()
	if in, ok := l.instances.Get(key); ok {
		return in
	}
	in := &instance{l: l, key: key, name: spec.name, m: l.meters.Meter(key, spec.meter), clients: map[string]*clientQueue{}, needsSync: spec.feedback != 0}
	in.lastUse = l.now()
	l.instances.Add(key, in)
	l.evictLocked(key)
	return in
}

// evictLocked drops the least recently used idle budgets beyond the cap; a
// budget someone waits on stays, so that one key never has two meters.
func (l *Limiter) evictLocked(keep string) {
	if l.instances.Len() <= maxInstances {
		return
	}
	for _, key := range l.instances.Keys() { // oldest first
		if l.instances.Len() <= maxInstances {
			return
		}
		if in, _ := l.instances.Peek(key); key != keep && in.idle() {
			l.instances.Remove(key)
		}
	}
}

// keyPart is the part of the budget key that splits one named budget.
func (s *Spec) keyPart(host string, r *http.Request) string {
	switch s.key {
	case keyHost:
		return host
	case keyClient:
		return clientOf(r)
	case keyClientName:
		return decision.From(r.Context()).Client
	case keyAPIKey:
		return s.apiKey(r)
	case keyHostAPIKey:
		return host + "|" + s.apiKey(r)
	}
	return ""
}

// apiKey returns a hash of the request's API key: budgets are per key, but
// the key itself is never kept or logged.
func (s *Spec) apiKey(r *http.Request) string {
	var v string
	if len(s.cfg.KeyHeaders) > 0 {
		for _, h := range s.cfg.KeyHeaders {
			if v = r.Header.Get(h); v != "" {
				break
			}
		}
	} else {
		names := make([]string, 0, len(r.Header))
		for name := range r.Header {
			if obs.SecretName(name) {
				names = append(names, name)
			}
		}
		if len(names) > 0 {
			slices.Sort(names) // the same key whatever the header order
			v = names[0] + ":" + r.Header.Get(names[0])
		}
	}
	if v == "" {
		return "anonymous"
	}
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:12])
}

// Level is one budget's state as operators see it.
type Level struct {
	Budget string `json:"budget"`
	// Key tells apart the budgets one name splits into (a host, a client,
	// a hash of an API key); "" for a budget of one.
	Key       string    `json:"key,omitempty"`
	Available float64   `json:"available"`
	Capacity  float64   `json:"capacity"`
	Queued    int       `json:"queued"`
	Paused    time.Time `json:"paused_until,omitzero"`
}

// maxLevels is how many budgets Levels reads: a shared meter's every
// read is a round trip to Redis.
const maxLevels = 50

// Levels returns the state of the most recently used budgets (at most
// maxLevels), by name and key.
func (l *Limiter) Levels() []Level {
	l.mu.Lock()
	ins := make([]*instance, 0, min(l.instances.Len(), maxLevels))
	keys := l.instances.Keys()
	for i := len(keys) - 1; i >= 0 && len(ins) < maxLevels; i-- { // newest first
		if in, ok := l.instances.Peek(keys[i]); ok {
			ins = append(ins, in)
		}
	}
	l.mu.Unlock()
	now := l.now()
	out := make([]Level, 0, len(ins))
	for _, in := range ins {
		in.mu.Lock()
		lv := Level{Budget: in.name, Key: strings.TrimPrefix(in.key, in.name+"|"), Capacity: in.m.Capacity(), Queued: in.waiting}
		if in.pausedUntil.After(now) {
			lv.Paused = in.pausedUntil
		}
		in.mu.Unlock()
		lv.Available = in.available(now)
		out = append(out, lv)
	}
	slices.SortFunc(out, func(a, b Level) int {
		return cmp.Or(strings.Compare(a.Budget, b.Budget), strings.Compare(a.Key, b.Key))
	})
	return out
}
