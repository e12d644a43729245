package redisstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/internal/store"
)

// Bans is the ban list of a fleet: a hash of the bans in Redis, and on
// every instance a mirror of it, kept current by a channel on which each
// change is announced (and read again whole every refresh, in case one was
// missed), so that checking a client costs no round trip. Strikes count in
// Redis, across instances.
type Bans struct {
	rdb    redis.UniversalClient
	hash   string // client -> JSON ban
	ch     string // announcements: a client whose ban changed
	prefix string
	now    func() time.Time
	log    *slog.Logger

	mu     sync.RWMutex
	mirror map[string]store.Ban

	sub    *redis.PubSub
	cancel context.CancelFunc
	done   chan struct{}
}

var _ store.BanList = (*Bans)(nil)

// refresh is how often the mirror is read again whole.
const refresh = 5 * time.Second

// OpenBans loads the fleet's bans and follows their changes until Close;
// now is the clock (nil: time.Now). Redis down at the start is logged: the
// mirror fills when it answers (the reconnecting subscription and the
// periodic read).
func OpenBans(ctx context.Context, rdb redis.UniversalClient, prefix string, log *slog.Logger, now func() time.Time) *Bans {
	if now == nil {
		now = time.Now
	}
	b := &Bans{rdb: rdb, hash: prefix + "bans", ch: prefix + "bans:changed", prefix: prefix, now: now, log: log,
		mirror: map[string]store.Ban{}, done: make(chan struct{})}
	b.sub = rdb.Subscribe(ctx, b.ch)
	// Subscribed before the first read, so that no change is missed.
	_, err := b.sub.Receive(ctx)
	if err == nil {
		err = b.reload(ctx)
	}
	if err != nil {
		log.Warn("fleet ban list not readable yet; read again every "+refresh.String(), "error", err.Error())
	}
	fctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	go b.follow(fctx)
	return b
}

// Close stops following the fleet's changes.
func (b *Bans) Close() error {
	b.cancel()
	err := b.sub.Close()
	<-b.done
	return err
}

func (b *Bans) follow(ctx context.Context) {
	defer close(b.done)
	msgs := b.sub.Channel()
	t := time.NewTicker(refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			b.changed(ctx, m.Payload)
		case <-t.C:
			if err := b.reload(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("fleet ban list not readable; the bans known stay in force", "error", err.Error())
			}
		}
	}
}

// changed reads one client's ban again, as another instance changed it.
func (b *Bans) changed(ctx context.Context, client string) {
	raw, err := b.rdb.HGet(ctx, b.hash, client).Result()
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case errors.Is(err, redis.Nil):
		delete(b.mirror, client)
	case err == nil:
		var x store.Ban
		if json.Unmarshal([]byte(raw), &x) == nil {
			b.mirror[client] = x
		}
	}
}

func (b *Bans) reload(ctx context.Context) error {
	all, err := b.rdb.HGetAll(ctx, b.hash).Result()
	if err != nil {
		return err
	}
	mirror := make(map[string]store.Ban, len(all))
	for client, raw := range all {
		var x store.Ban
		if json.Unmarshal([]byte(raw), &x) == nil {
			mirror[client] = x
		}
	}
	b.mu.Lock()
	b.mirror = mirror
	b.mu.Unlock()
	return nil
}

// Banned answers from the mirror: no round trip, and Redis down keeps the
// bans known in force.
func (b *Bans) Banned(_ context.Context, client string) (store.Ban, bool, error) {
	b.mu.RLock()
	x, ok := b.mirror[client]
	b.mu.RUnlock()
	return x, ok && x.Until.After(b.now()), nil
}

var strikeScript = redis.NewScript(`
local key, seq = KEYS[1], KEYS[2]
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
redis.call('ZADD', key, now, redis.call('INCR', seq))
redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1000)
redis.call('PEXPIRE', seq, math.ceil(window / 1000) + 1000)
return redis.call('ZCARD', key)
`)

// Strike counts client's violations within window across the fleet.
func (b *Bans) Strike(ctx context.Context, client string, window time.Duration) (int, error) {
	n, err := strikeScript.Run(ctx, b.rdb, []string{b.prefix + "strikes:" + client, b.prefix + "strikes:seq"},
		b.now().UnixMicro(), window.Microseconds()).Int()
	return n, err
}

// Add bans b.Client everywhere and forgets its violations.
func (b *Bans) Add(ctx context.Context, x store.Ban) error {
	raw, _ := json.Marshal(x)
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, b.hash, x.Client, raw)
		p.Del(ctx, b.prefix+"strikes:"+x.Client)
		p.Publish(ctx, b.ch, x.Client)
		return nil
	})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.mirror[x.Client] = x
	b.mu.Unlock()
	return nil
}

// Remove lifts client's ban everywhere; it reports whether one was in force.
func (b *Bans) Remove(ctx context.Context, client string) (bool, error) {
	var raw *redis.StringCmd
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		raw = p.HGet(ctx, b.hash, client)
		p.HDel(ctx, b.hash, client)
		p.Del(ctx, b.prefix+"strikes:"+client)
		p.Publish(ctx, b.ch, client)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	b.mu.Lock()
	delete(b.mirror, client)
	b.mu.Unlock()
	var x store.Ban
	if s, err := raw.Result(); err != nil || json.Unmarshal([]byte(s), &x) != nil {
		return false, nil
	}
	return x.Until.After(b.now()), nil
}

// List returns the fleet's bans in force, the soonest to end first; ended
// ones are dropped from Redis on the way.
func (b *Bans) List(ctx context.Context) ([]store.Ban, error) {
	all, err := b.rdb.HGetAll(ctx, b.hash).Result()
	if err != nil {
		return nil, err
	}
	now := b.now()
	var out []store.Ban
	var ended []string
	for _, client := range slices.Sorted(maps.Keys(all)) {
		var x store.Ban
		if json.Unmarshal([]byte(all[client]), &x) != nil || !x.Until.After(now) {
			ended = append(ended, client)
			continue
		}
		out = append(out, x)
	}
	if len(ended) > 0 {
		b.rdb.HDel(ctx, b.hash, ended...)
	}
	slices.SortStableFunc(out, func(a, c store.Ban) int { return cmp.Compare(a.Until.UnixNano(), c.Until.UnixNano()) })
	return out, nil
}
