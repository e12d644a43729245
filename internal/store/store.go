// Package store holds the state that a fleet of sluice instances would
// share, behind small interfaces: budget meters (Meters) and the ban list
// (BanList). The implementations here are in-memory and network-free; a
// shared one (Redis, a later issue) must pass the same contract suites,
// store/storetest, that these pass.
package store

import (
	"context"
	"time"
)

// Model is a budget model.
type Model uint8

const (
	// Window allows at most Limit in any interval of length Window.
	Window Model = iota
	// Bucket is a token bucket of Limit tokens refilled at Rate per second,
	// or equally a leaky bucket of that capacity leaking at that rate.
	Bucket
)

// MeterSpec is the shape of one budget.
type MeterSpec struct {
	Model  Model
	Limit  float64
	Window time.Duration
	Rate   float64
}

// Meters makes the meter of each budget key. Implementations are safe for
// concurrent use.
type Meters interface {
	// Meter returns the meter of key, of the shape spec (the same key is
	// always asked with the same spec).
	Meter(key string, spec MeterSpec) Meter
}

// Meter is one budget's count. Every method is safe for concurrent use;
// the time is the caller's, so a test or a fleet decides what now is.
type Meter interface {
	// Wait returns 0 if cost fits now, else how long until it will. It spends nothing.
	Wait(ctx context.Context, now time.Time, cost float64) (time.Duration, error)
	// Take spends cost and returns 0 if it fits now; else it spends
	// nothing and returns how long until it would fit. Check and spend are
	// one step: two callers never both take the last of a budget.
	Take(ctx context.Context, now time.Time, cost float64) (time.Duration, error)
	// Sync raises the spent amount to what the upstream reports used; it
	// never lowers it (sluice's own count includes requests in flight).
	Sync(ctx context.Context, now time.Time, used float64) error
	// Reshape sets a bucket's capacity and rate as the upstream reports its
	// plan (a value of 0 is left as it is); a window ignores it.
	Reshape(ctx context.Context, capacity, rate float64) error
	// Pause holds every spending until until: the upstream answered 429
	// or 418 to one of the budget's users, and every user must wait.
	// Wait and Take return the rest of the pause meanwhile.
	Pause(ctx context.Context, until time.Time) error
	// Available is what fits now.
	Available(ctx context.Context, now time.Time) (float64, error)
	// Capacity is the most that fits at once.
	Capacity() float64
}

// Ban is one banned client.
type Ban struct {
	Client string    `json:"client"`
	Until  time.Time `json:"until"`
	Reason string    `json:"reason"`
}

// BanList keeps the bans and counts each client's violations.
// Implementations are safe for concurrent use.
type BanList interface {
	// Banned returns client's ban if one is in force.
	Banned(ctx context.Context, client string) (Ban, bool, error)
	// Strike records a violation by client now and returns how many it
	// made within window, this one included.
	Strike(ctx context.Context, client string, window time.Duration) (int, error)
	// Add bans b.Client until b.Until and forgets its violations.
	Add(ctx context.Context, b Ban) error
	// Remove lifts client's ban and forgets its violations; it reports
	// whether there was a ban.
	Remove(ctx context.Context, client string) (bool, error)
	// List returns the bans in force, the soonest to end first.
	List(ctx context.Context) ([]Ban, error)
}
