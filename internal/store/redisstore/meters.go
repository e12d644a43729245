// Package redisstore keeps the state a fleet of sluice instances shares in
// Redis: budget meters, each call one atomic Lua script (one round trip),
// and the ban list (a hash of bans and a channel announcing changes, which
// every instance mirrors in memory, so that checking a ban costs no round
// trip). Times are the callers': instances agree on the clock by NTP, and
// tests may run the contract suite on a clock of their own.
package redisstore

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/internal/store"
)

// Meters are budget meters in Redis under prefix.
type Meters struct {
	rdb    redis.UniversalClient
	prefix string
}

var _ store.Meters = (*Meters)(nil)

// NewMeters returns the meters kept in rdb under keys starting with prefix.
func NewMeters(rdb redis.UniversalClient, prefix string) *Meters {
	return &Meters{rdb: rdb, prefix: prefix}
}

// Meter returns the shared meter of key.
func (m *Meters) Meter(key string, spec store.MeterSpec) store.Meter {
	k := m.prefix + "meter:" + key
	if spec.Model == store.Bucket {
		return &bucket{rdb: m.rdb, key: k, burst: spec.Limit, rate: spec.Rate}
	}
	w := &window{rdb: m.rdb, key: k, span: spec.Window}
	w.limit.Store(math.Float64bits(spec.Limit))
	return w
}

func micros(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

// fromMicros reads a script's wait in microseconds; what is not a number
// is an error, never a wait of 0 (which would spend what may not fit).
func fromMicros(v any, err error) (time.Duration, error) {
	if err != nil {
		return 0, err
	}
	s, _ := v.(string)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("budget script answered %v: %w", v, err)
	}
	return time.Duration(math.Ceil(f)) * time.Microsecond, nil
}

// The window: a sorted set of spendings (score: when, member: id:cost) and
// their running sum; a spending is held span plus a guard, as the
// in-memory window holds it (store.MemoryMeters).
var windowScript = redis.NewScript(`
local set, sumkey, seq, pause = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, hold, limit, cost, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local paused = tonumber(redis.call('GET', pause) or '0')
if (mode == 'take' or mode == 'wait') and now < paused then return tostring(paused - now) end
local function costof(m) return tonumber(string.match(m, ':(.*)$')) end
local sum = tonumber(redis.call('GET', sumkey) or '0')
local old = redis.call('ZRANGEBYSCORE', set, '-inf', now - hold)
for _, m in ipairs(old) do sum = sum - costof(m) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', set, '-inf', now - hold) end
if redis.call('ZCARD', set) == 0 then sum = 0 end
local ttl = math.ceil(hold / 1000) * 2 + 1000
local function save()
  redis.call('SET', sumkey, tostring(sum), 'PX', ttl)
  redis.call('PEXPIRE', set, ttl)
  redis.call('PEXPIRE', seq, ttl)
end
local function spend(c)
  redis.call('ZADD', set, now, redis.call('INCR', seq) .. ':' .. tostring(c))
  sum = sum + c
end
if mode == 'avail' then save() return tostring(math.max(limit - sum, 0)) end
if mode == 'sync' then
  if cost > sum then spend(cost - sum) end
  save() return '0'
end
local over = sum + cost - limit
if over <= 0 then
  if mode == 'take' then spend(cost) end
  save() return '0'
end
-- The oldest spendings, a few at a time: the wait ends when enough of
-- them have left, which rarely needs the whole set.
local from = 0
while true do
  local some = redis.call('ZRANGE', set, from, from + 31, 'WITHSCORES')
  if #some == 0 then break end
  for i = 1, #some, 2 do
    over = over - costof(some[i])
    if over <= 1e-9 then save() return tostring(tonumber(some[i+1]) + hold - now) end
  end
  from = from + 32
end
save() return tostring(hold)
`)

type window struct {
	rdb redis.UniversalClient
	key string
	// limit holds the float64 bits: Reshape sets it while requests run.
	limit atomic.Uint64
	span  time.Duration
}

func (w *window) hold() time.Duration { return w.span + min(w.span/20, time.Second) }

func (w *window) run(ctx context.Context, now time.Time, cost float64, mode string) (any, error) {
	return windowScript.Run(ctx, w.rdb, []string{w.key + ":set", w.key + ":sum", w.key + ":seq", w.key + ":pause"},
		micros(now), w.hold().Microseconds(), w.Capacity(), cost, mode).Result()
}

func (w *window) Wait(ctx context.Context, now time.Time, cost float64) (time.Duration, error) {
	return fromMicros(w.run(ctx, now, cost, "wait"))
}

func (w *window) Take(ctx context.Context, now time.Time, cost float64) (time.Duration, error) {
	return fromMicros(w.run(ctx, now, cost, "take"))
}

func (w *window) Sync(ctx context.Context, now time.Time, used float64) error {
	_, err := w.run(ctx, now, used, "sync")
	return err
}

// Reshape sets this instance's view of the window's limit to capacity,
// as the upstream reports its plan; a window has no rate.
func (w *window) Reshape(_ context.Context, capacity, _ float64) error {
	if capacity > 0 {
		w.limit.Store(math.Float64bits(capacity))
	}
	return nil
}

func (w *window) Pause(ctx context.Context, until time.Time) error {
	return pause(ctx, w.rdb, w.key+":pause", until)
}

// pauseScript extends a pause, never shortens it; the key lives as long as
// the pause (from the caller's clock) and a second more.
var pauseScript = redis.NewScript(`
local ends = tonumber(ARGV[1])
if ends > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
`)

func pause(ctx context.Context, rdb redis.UniversalClient, key string, until time.Time) error {
	ttl := max(time.Until(until), 0) + time.Second
	return pauseScript.Run(ctx, rdb, []string{key}, micros(until), ttl.Milliseconds()).Err()
}

func (w *window) Available(ctx context.Context, now time.Time) (float64, error) {
	v, err := w.run(ctx, now, 0, "avail")
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(fmt.Sprint(v), 64)
}

func (w *window) Capacity() float64 { return math.Float64frombits(w.limit.Load()) }

// The bucket: a hash of what is spent (level), when it last leaked, and
// the shape, which Reshape changes for every instance.
var bucketScript = redis.NewScript(`
local key, pause = KEYS[1], KEYS[2]
local now, burst, rate, cost, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local paused = tonumber(redis.call('GET', pause) or '0')
if (mode == 'take' or mode == 'wait') and now < paused then return tostring(paused - now) end
local h = redis.call('HMGET', key, 'level', 'last', 'burst', 'rate')
local level, last = tonumber(h[1] or '0'), tonumber(h[2] or '0')
if h[3] then burst = tonumber(h[3]) end
if h[4] then rate = tonumber(h[4]) end
if last > 0 and now > last then level = math.max(level - rate * (now - last) / 1e6, 0) end
if now > last then last = now end
local function save()
  redis.call('HSET', key, 'level', tostring(level), 'last', tostring(last), 'burst', tostring(burst), 'rate', tostring(rate))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) * 2 + 60000)
end
if mode == 'reshape' then
  if cost > 0 then burst = cost end
  if tonumber(ARGV[6]) > 0 then rate = tonumber(ARGV[6]) end
  save() return tostring(burst)
end
if mode == 'avail' then save() return tostring(math.max(burst - level, 0)) .. ' ' .. tostring(burst) end
if mode == 'sync' then
  if cost > level then level = cost end
  save() return '0'
end
local over = level + cost - burst
if over <= 1e-9 then
  if mode == 'take' then level = level + cost end
  save() return '0'
end
save() return tostring(over / rate * 1e6)
`)

type bucket struct {
	rdb redis.UniversalClient
	key string

	mu          sync.Mutex // guards the shape last seen, for Capacity
	burst, rate float64
}

func (b *bucket) run(ctx context.Context, now time.Time, cost float64, mode string, extra float64) (any, error) {
	b.mu.Lock()
	burst, rate := b.burst, b.rate
	b.mu.Unlock()
	return bucketScript.Run(ctx, b.rdb, []string{b.key, b.key + ":pause"}, micros(now), burst, rate, cost, mode, extra).Result()
}

func (b *bucket) Wait(ctx context.Context, now time.Time, cost float64) (time.Duration, error) {
	return fromMicros(b.run(ctx, now, cost, "wait", 0))
}

func (b *bucket) Take(ctx context.Context, now time.Time, cost float64) (time.Duration, error) {
	return fromMicros(b.run(ctx, now, cost, "take", 0))
}

func (b *bucket) Sync(ctx context.Context, now time.Time, used float64) error {
	_, err := b.run(ctx, now, used, "sync", 0)
	return err
}

func (b *bucket) Reshape(ctx context.Context, capacity, rate float64) error {
	v, err := b.run(ctx, time.Time{}, capacity, "reshape", rate)
	if err != nil {
		return err
	}
	burst, err := strconv.ParseFloat(fmt.Sprint(v), 64)
	if err == nil {
		b.mu.Lock()
		b.burst = burst
		if rate > 0 {
			b.rate = rate
		}
		b.mu.Unlock()
	}
	return err
}

func (b *bucket) Pause(ctx context.Context, until time.Time) error {
	return pause(ctx, b.rdb, b.key+":pause", until)
}

func (b *bucket) Available(ctx context.Context, now time.Time) (float64, error) {
	v, err := b.run(ctx, now, 0, "avail", 0)
	if err != nil {
		return 0, err
	}
	var avail, burst float64
	if _, err := fmt.Sscan(fmt.Sprint(v), &avail, &burst); err != nil {
		return 0, err
	}
	b.mu.Lock()
	b.burst = burst // another instance may have reshaped it
	b.mu.Unlock()
	return avail, nil
}

func (b *bucket) Capacity() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.burst
}
