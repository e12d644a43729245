package redisstore

import (
	"context"
	"encoding/json"
	"time"

	"sluice/internal/guardrails"
)

// Halts shares the trading halts of a fleet: each is a field of one hash,
// and a change is announced on a channel, so that every instance holds a
// halt within moments of the one that took it; a reload every second
// catches an announcement missed. With Redis gone, an instance keeps the
// halts it last knew.
type Halts struct {
	f            *Fleet
	key, channel string
	apply        func([]guardrails.Halt)
	interval     time.Duration
}

// Halts returns the fleet's halts; apply gets the whole list each time it
// is read from Redis.
func (f *Fleet) Halts(apply func([]guardrails.Halt)) *Halts {
	return &Halts{f: f, key: f.prefix + "halts", channel: f.prefix + "halts:changed", apply: apply, interval: time.Second}
}

// Put shares h with the fleet.
func (h *Halts) Put(ctx context.Context, halt guardrails.Halt) error {
	data, err := json.Marshal(halt)
	if err != nil {
		return err
	}
	return h.f.call(ctx, func(ctx context.Context) error {
		pipe := h.f.rdb.TxPipeline()
		pipe.HSet(ctx, h.key, halt.Scope, data)
		pipe.Publish(ctx, h.channel, halt.Scope)
		_, err := pipe.Exec(ctx)
		return err
	})
}

// Remove lifts scope's halt in the fleet.
func (h *Halts) Remove(ctx context.Context, scope string) error {
	return h.f.call(ctx, func(ctx context.Context) error {
		pipe := h.f.rdb.TxPipeline()
		pipe.HDel(ctx, h.key, scope)
		pipe.Publish(ctx, h.channel, scope)
		_, err := pipe.Exec(ctx)
		return err
	})
}

// Follow applies the fleet's halts as they change, until ctx ends.
func (h *Halts) Follow(ctx context.Context) {
	sub := h.f.rdb.Subscribe(ctx, h.channel)
	defer sub.Close()
	changed := sub.Channel()
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		h.load(ctx)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// load reads every halt and applies them; on an error the halts in force
// stay as they are.
func (h *Halts) load(ctx context.Context) {
	var all map[string]string
	if h.f.call(ctx, func(ctx context.Context) (err error) { all, err = h.f.rdb.HGetAll(ctx, h.key).Result(); return err }) != nil {
		return
	}
	halts := make([]guardrails.Halt, 0, len(all))
	for _, v := range all {
		var halt guardrails.Halt
		if json.Unmarshal([]byte(v), &halt) == nil {
			halts = append(halts, halt)
		}
	}
	h.apply(halts)
}
