package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Throttle is the upstream budget of a host: how much it may be sent, and
// how sluice learns what is left from the upstream's answers.
type Throttle struct {
	// Budget names the budget; hosts that name the same one share it
	// (Binance meters weight per IP, whatever the host name). Default: the
	// host entry's pattern.
	Budget string `yaml:"budget,omitempty"`
	// Model is window (at most Limit weight in any Window), token_bucket
	// (Rate per second, Burst) or leaky_bucket (Capacity, LeakRate per second).
	Model  string   `yaml:"model"`
	Limit  float64  `yaml:"limit,omitempty"`
	Window Duration `yaml:"window,omitempty"`
	Rate   float64  `yaml:"rate,omitempty"`
	Burst  float64  `yaml:"burst,omitempty"`
	// Capacity and LeakRate are the leaky bucket's names for Burst and Rate.
	Capacity float64 `yaml:"capacity,omitempty"`
	LeakRate float64 `yaml:"leak_rate,omitempty"`
	// Key splits the budget: budget (one for all, the default), host (one
	// per host name), api_key (one per API key, hashed), host_api_key, or
	// client (one per client IP).
	Key string `yaml:"key,omitempty"`
	// KeyHeaders carry the API key for the api_key keys. Default: any
	// credential-like header (Authorization, X-MBX-APIKEY, X-Shopify-Access-Token, ...).
	KeyHeaders []string `yaml:"key_headers,omitempty,flow"`
	// MaxWait is how long a request may queue for budget before sluice
	// answers 429 itself. Default throttle.max_wait (10s).
	MaxWait *Duration `yaml:"max_wait,omitempty"`
	// DefaultWeight is what a request costs when no weight rule matches. Default 1.
	DefaultWeight float64 `yaml:"default_weight,omitempty"`
	// Weights are tried in order; the first match gives the request's cost.
	Weights []WeightRule `yaml:"weights,omitempty"`
	// Feedback lists the quota signals read from every response: binance
	// (X-MBX-USED-WEIGHT-*), shopify (X-Shopify-Shop-Api-Call-Limit),
	// ratelimit (RateLimit-* and X-RateLimit-*), etsy_second
	// (x-limit-per-second, x-remaining-this-second), etsy_day
	// (x-limit-per-day, x-remaining-today). A 429 or 418 always pauses
	// the budget for its Retry-After.
	Feedback []string `yaml:"feedback,omitempty,flow"`
	// PathRegex, when set, limits the throttle to matching request paths;
	// a host's throttles are tried in order (Shopify meters its REST and
	// GraphQL APIs on one host with two budgets).
	PathRegex string `yaml:"path_regex,omitempty"`
	// Stack makes a request that matches this throttle also spend the next
	// one that matches it, instead of this one alone: an upstream that
	// meters per second and per day (Etsy) is two budgets, both spent.
	Stack bool `yaml:"stack,omitempty"`
}

// WeightRule gives the cost of matching requests.
type WeightRule struct {
	Path      string  `yaml:"path,omitempty"`
	PathRegex string  `yaml:"path_regex,omitempty"`
	Weight    float64 `yaml:"weight"`
	// Param makes the weight depend on a query parameter: Steps pick the
	// weight by the parameter's number (or, with List, by how many items its
	// JSON array holds), else Weight. Without the parameter the request
	// weighs Absent, or is weighed as if it were Default; with neither set,
	// the rule does not match and the next one is tried.
	Param  string       `yaml:"param,omitempty"`
	Absent float64      `yaml:"absent,omitempty"`
	List   bool         `yaml:"list,omitempty"`
	Steps  []WeightStep `yaml:"steps,omitempty,flow"`
	// Default is the parameter's value when it is absent and Absent is 0.
	Default float64 `yaml:"default,omitempty"`
}

// WeightStep says that up to Max (inclusive), the request weighs Weight.
type WeightStep struct {
	Max    float64 `yaml:"max"`
	Weight float64 `yaml:"weight"`
}

// HostThrottle is a host entry's `throttle`: "off", or a Throttle.
type HostThrottle struct {
	Off bool
	Throttle
}

// UnmarshalYAML accepts "off" or the mapping.
func (ht *HostThrottle) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value != "off" {
			return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: throttle %q: want off or a mapping", n.Line, n.Value)}}
		}
		ht.Off = true
		return nil
	}
	return strictDecode(n, &ht.Throttle)
}

// MarshalYAML writes "off" or the mapping.
func (ht HostThrottle) MarshalYAML() (any, error) {
	if ht.Off {
		return "off", nil
	}
	return ht.Throttle, nil
}

// ThrottleConfig is the top-level `throttle` section.
type ThrottleConfig struct {
	// MaxWait is the default queueing limit. Default 10s.
	MaxWait Duration `yaml:"max_wait"`
}

var (
	throttleModels = []string{"window", "token_bucket", "leaky_bucket"}
	throttleKeys   = []string{"budget", "host", "api_key", "host_api_key", "client", "client_name"}
	feedbacks      = []string{"binance", "shopify", "shopify_graphql", "ratelimit", "etsy_second", "etsy_day"}
)

func (t *Throttle) validate() error {
	var errs []error
	switch t.Model {
	case "window":
		if t.Limit <= 0 || t.Window <= 0 {
			errs = append(errs, errors.New("model window needs a positive limit and window"))
		}
	case "token_bucket":
		if t.Rate <= 0 || t.Burst <= 0 {
			errs = append(errs, errors.New("model token_bucket needs a positive rate and burst"))
		}
	case "leaky_bucket":
		if t.LeakRate <= 0 || t.Capacity <= 0 {
			errs = append(errs, errors.New("model leaky_bucket needs a positive capacity and leak_rate"))
		}
	default:
		errs = append(errs, fmt.Errorf("model %q is not one of %s", t.Model, strings.Join(throttleModels, ", ")))
	}
	if t.Key != "" && !slices.Contains(throttleKeys, t.Key) {
		errs = append(errs, fmt.Errorf("key %q is not one of %s", t.Key, strings.Join(throttleKeys, ", ")))
	}
	for _, f := range t.Feedback {
		if !slices.Contains(feedbacks, f) {
			errs = append(errs, fmt.Errorf("feedback %q is not one of %s", f, strings.Join(feedbacks, ", ")))
		}
	}
	if t.MaxWait != nil && *t.MaxWait < 0 {
		errs = append(errs, errors.New("max_wait must not be negative"))
	}
	for i, w := range t.Weights {
		if err := w.validate(); err != nil {
			errs = append(errs, fmt.Errorf("weights[%d]: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

func (w *WeightRule) validate() error {
	switch {
	case w.Path == "" && w.PathRegex == "":
		return errors.New("give path or path_regex")
	case w.Path != "" && w.PathRegex != "":
		return errors.New("give path or path_regex, not both")
	case w.Weight < 0 || w.Absent < 0:
		return errors.New("weights must not be negative")
	case len(w.Steps) > 0 && w.Param == "":
		return errors.New("steps need a param")
	}
	for i := 1; i < len(w.Steps); i++ {
		if w.Steps[i].Max <= w.Steps[i-1].Max {
			return errors.New("steps must be in increasing order of max")
		}
	}
	return nil
}
