package redisstore

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// TradeCounts counts a fleet's orders per guardrails scope in Redis, so
// that a limit holds for the fleet, not for each instance: one hash per
// scope with a bucket a second (the last minute) and a minute (the last
// 24 hours) and their running totals, checked and counted in one script.
type TradeCounts struct {
	f      *Fleet
	prefix string
}

// TradeCounts returns the fleet's order counts.
func (f *Fleet) TradeCounts() *TradeCounts { return &TradeCounts{f: f, prefix: f.prefix + "gr:"} }

// checkAddScript advances each scope's windows to ARGV[1] (Unix seconds),
// checks ARGV[2] orders worth ARGV[3] against each scope's limits (ARGV
// 4.. in threes: orders a minute, orders a day, notional a day; 0: none)
// and, when all allow, counts them. It returns {refused scope index (0:
// none), refused limit, then each scope's minute, day and notional
// totals before the order}.
var checkAddScript = redis.NewScript(`
local s = tonumber(ARGV[1])
local mi = math.floor(s / 60)
local n = tonumber(ARGV[2])
local v = tonumber(ARGV[3])
local totals = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'ls', 'lm', 'm', 'd', 'dn')
  local ls, lm = tonumber(h[1]) or 0, tonumber(h[2]) or 0
  local m, d, dn = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
  for t = math.max(ls + 1, s - 59), s do
    local f = 's' .. (t % 60)
    m = m - (tonumber(redis.call('HGET', key, f)) or 0)
    redis.call('HDEL', key, f)
  end
  for t = math.max(lm + 1, mi - 1439), mi do
    local k = t % 1440
    d = d - (tonumber(redis.call('HGET', key, 'o' .. k)) or 0)
    dn = dn - (tonumber(redis.call('HGET', key, 'v' .. k)) or 0)
    redis.call('HDEL', key, 'o' .. k, 'v' .. k)
  end
  redis.call('HSET', key, 'ls', math.max(ls, s), 'lm', math.max(lm, mi), 'm', m, 'd', d, 'dn', dn)
  redis.call('EXPIRE', key, 90000)
  totals[i] = {m, d, dn}
end
local out = {0, ''}
for i, t in ipairs(totals) do
  local base = 4 + (i - 1) * 3
  local opm, opd, npd = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if out[1] == 0 then
    if opm > 0 and t[1] + n > opm then out = {i, 'orders_per_minute'}
    elseif opd > 0 and t[2] + n > opd then out = {i, 'orders_per_day'}
    elseif npd > 0 and t[3] + v > npd then out = {i, 'notional_per_day'} end
  end
end
for i, t in ipairs(totals) do
  table.insert(out, t[1]); table.insert(out, t[2]); table.insert(out, tostring(t[3]))
end
if out[1] == 0 then
  for i, key in ipairs(KEYS) do
    redis.call('HINCRBY', key, 's' .. (s % 60), n)
    redis.call('HINCRBY', key, 'o' .. (mi % 1440), n)
    redis.call('HINCRBYFLOAT', key, 'v' .. (mi % 1440), v)
    redis.call('HINCRBY', key, 'm', n)
    redis.call('HINCRBY', key, 'd', n)
    redis.call('HINCRBYFLOAT', key, 'dn', v)
  end
end
return out
`)

// CheckAdd checks n orders worth notional against each scope's limits as
// the fleet counted them ({orders a minute, orders a day, notional a day};
// 0: none) and counts them when all allow. refused is the index of the
// scope whose limit refused them (-1: none); before are each scope's
// totals before the orders.
func (t *TradeCounts) CheckAdd(ctx context.Context, ids []string, limits [][3]float64, n int, notional float64, now time.Time) (refused int, limit string, before [][3]float64, err error) {
	keys := make([]string, len(ids))
	args := []any{now.Unix(), n, strconv.FormatFloat(notional, 'f', -1, 64)}
	for i, id := range ids {
		keys[i] = t.prefix + id
		args = append(args, limits[i][0], limits[i][1], strconv.FormatFloat(limits[i][2], 'f', -1, 64))
	}
	var res []any
	err = t.f.call(ctx, func(ctx context.Context) (err error) {
		res, err = checkAddScript.Run(ctx, t.f.rdb, keys, args...).Slice()
		return err
	})
	if err != nil {
		return -1, "", nil, err
	}
	idx, _ := res[0].(int64)
	limit, _ = res[1].(string)
	for i := 2; i+2 < len(res); i += 3 {
		var tot [3]float64
		for j := range 3 {
			switch v := res[i+j].(type) {
			case int64:
				tot[j] = float64(v)
			case string:
				tot[j], _ = strconv.ParseFloat(v, 64)
			}
		}
		before = append(before, tot)
	}
	return int(idx) - 1, limit, before, nil
}
