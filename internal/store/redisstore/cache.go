package redisstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"sluice/internal/cache"
	"sluice/internal/metrics"
)

// Cache is the fleet's response cache (fleet.cache), the second level
// behind each instance's memory cache. An entry is a hash (status, header,
// body) that expires with its TTL; a sorted set by expiry and a size
// count keep the whole under maxBytes, the entries nearest their expiry
// going first. A fill is claimed by one instance at a time (a key with the
// fetch timeout as its life), and the others wait for its announcement on
// a channel, so the fleet makes one upstream call per key per TTL.
// Entry names are hashes of the cache keys: no URL is kept in Redis.
//
// Metrics: sluice_fleet_cache_evictions_total.
type Cache struct {
	f        *Fleet
	prefix   string
	token    string // this instance's claims
	maxBytes int64

	sub  *redis.PubSub
	done chan struct{}

	mu      sync.Mutex
	waiters map[string][]chan struct{} // by entry name

	evictions prometheus.Counter
}

var _ cache.Shared = (*Cache)(nil)

// poll is how often a waiter looks again in case an announcement was lost.
const poll = 100 * time.Millisecond

// Cache opens the fleet's response cache, of at most maxBytes in Redis,
// until Close.
func (f *Fleet) Cache(ctx context.Context, maxBytes int64, reg prometheus.Registerer) (*Cache, error) {
	nonce := make([]byte, 8)
	rand.Read(nonce)
	c := &Cache{f: f, prefix: f.prefix + "cache:", token: f.instance + ":" + hex.EncodeToString(nonce), maxBytes: maxBytes,
		done: make(chan struct{}), waiters: map[string][]chan struct{}{},
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "fleet", Name: "cache_evictions_total",
			Help: "Entries this instance evicted from the fleet cache to keep it within fleet.cache_max_bytes."}),
	}
	if err := metrics.Register(reg, c.evictions); err != nil {
		return nil, err
	}
	c.sub = f.rdb.Subscribe(ctx, c.prefix+"filled")
	go c.follow()
	return c, nil
}

// Close stops following the fleet's fills.
func (c *Cache) Close() error {
	err := c.sub.Close()
	<-c.done
	return err
}

func (c *Cache) follow() {
	defer close(c.done)
	for m := range c.sub.Channel() {
		c.mu.Lock()
		for _, ch := range c.waiters[m.Payload] {
			close(ch)
		}
		delete(c.waiters, m.Payload)
		c.mu.Unlock()
	}
}

// name is the Redis name of a cache key's entry.
func (c *Cache) name(key string) string {
	sum := sha256.Sum256([]byte(key))
	return c.prefix + "e:" + hex.EncodeToString(sum[:16])
}

func (c *Cache) claimName(entry string) string { return entry + ":fill" }

// lookupScript returns {1, status, header, body, pttl} for a stored
// entry; else claims its fill ({2}) unless another instance holds it ({0}).
var lookupScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 's', 'h', 'b')
if v[1] then return {1, v[1], v[2], v[3], redis.call('PTTL', KEYS[1])} end
if ARGV[1] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
  return {3}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
`)

// storeScript stores an entry for ARGV[4] ms, forgets the entries that
// expired, evicts the nearest to expiry while the cache is over ARGV[5]
// bytes, ends this instance's claim and announces the fill. It returns
// how many it evicted.
// KEYS: entry, claim, index (entry by expiry), sizes (entry -> bytes), total bytes.
var storeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function forget(k)
  local s = redis.call('HGET', KEYS[4], k)
  if s then
    redis.call('HDEL', KEYS[4], k)
    redis.call('DECRBY', KEYS[5], s)
  end
  redis.call('ZREM', KEYS[3], k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 256)) do forget(k) end
forget(KEYS[1])
local size = #KEYS[1] + #ARGV[2] + #ARGV[3] + 128
local evicted = 0
if size <= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 's', ARGV[1], 'h', ARGV[2], 'b', ARGV[3], 'k', ARGV[8])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), KEYS[1])
  redis.call('HSET', KEYS[4], KEYS[1], size)
  local total = redis.call('INCRBY', KEYS[5], size)
  while total > tonumber(ARGV[5]) do
    local first = redis.call('ZRANGE', KEYS[3], 0, 0)
    if #first == 0 then break end
    forget(first[1])
    redis.call('DEL', first[1])
    evicted = evicted + 1
    total = tonumber(redis.call('GET', KEYS[5]))
  end
end
if redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[7], KEYS[1])
return evicted
`)

// purgeScript removes the entries KEYS[4:] and forgets their sizes.
// KEYS: index, sizes, total bytes, entries...
var purgeScript = redis.NewScript(`
local n = 0
for i = 4, #KEYS do
  local s = redis.call('HGET', KEYS[2], KEYS[i])
  if s then
    redis.call('HDEL', KEYS[2], KEYS[i])
    redis.call('DECRBY', KEYS[3], s)
  end
  redis.call('ZREM', KEYS[1], KEYS[i])
  n = n + redis.call('DEL', KEYS[i])
end
return n
`)

// Purge removes every shared entry whose key match accepts, and returns
// how many it removed. The index of entries bounds the walk (the shared
// cache is bounded by fleet.cache_max_bytes).
func (c *Cache) Purge(ctx context.Context, match func(key string) bool) (int, error) {
	var removed int
	err := c.f.call(ctx, func(ctx context.Context) error {
		names, err := c.f.rdb.ZRange(ctx, c.prefix+"index", 0, -1).Result()
		if err != nil {
			return err
		}
		pipe := c.f.rdb.Pipeline()
		keys := make([]*redis.StringCmd, len(names))
		for i, n := range names {
			keys[i] = pipe.HGet(ctx, n, "k")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		purge := []string{c.prefix + "index", c.prefix + "sizes", c.prefix + "bytes"}
		for i, k := range keys {
			if key, err := k.Result(); err == nil && match(key) {
				purge = append(purge, names[i])
			}
		}
		if len(purge) == 3 {
			return nil
		}
		n, err := purgeScript.Run(ctx, c.f.rdb, purge).Int()
		removed = n
		return err
	})
	return removed, err
}

// releaseScript ends this instance's claim and announces that the fill
// is over (without an entry: the waiters fetch alone).
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 0
`)

func (c *Cache) Lookup(ctx context.Context, key string, hold time.Duration) (resp *cache.SharedResponse, claimed bool, err error) {
	name := c.name(key)
	err = c.f.call(ctx, func(ctx context.Context) error {
		v, err := lookupScript.Run(ctx, c.f.rdb, []string{name, c.claimName(name)}, c.token, hold.Milliseconds()).Slice()
		if err != nil {
			return err
		}
		resp, claimed, err = decodeLookup(v)
		return err
	})
	return resp, claimed, err
}

func (c *Cache) Await(ctx context.Context, key string, d time.Duration) (*cache.SharedResponse, error) {
	name := c.name(key)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		// Waiting before looking, so that an announcement between the two is not missed.
		ch := make(chan struct{})
		c.mu.Lock()
		c.waiters[name] = append(c.waiters[name], ch)
		c.mu.Unlock()
		var resp *cache.SharedResponse
		var gone bool
		err := c.f.call(ctx, func(ctx context.Context) error {
			v, err := lookupScript.Run(ctx, c.f.rdb, []string{name, c.claimName(name)}, "", 0).Slice()
			if err != nil {
				return err
			}
			resp, _, err = decodeLookup(v)
			gone = len(v) == 1 && v[0] == int64(3)
			return err
		})
		if err != nil || resp != nil || gone {
			c.unwait(name, ch)
			return resp, err
		}
		t := time.NewTimer(poll)
		select {
		case <-ch:
		case <-t.C:
			c.unwait(name, ch)
		case <-ctx.Done():
			t.Stop()
			c.unwait(name, ch)
			return nil, nil // the fill took too long: fetch alone
		}
		t.Stop()
	}
}

func (c *Cache) unwait(name string, ch chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	chans := c.waiters[name]
	for i, x := range chans {
		if x == ch {
			c.waiters[name] = append(chans[:i:i], chans[i+1:]...)
			break
		}
	}
	if len(c.waiters[name]) == 0 {
		delete(c.waiters, name)
	}
}

func (c *Cache) Store(ctx context.Context, key string, resp *cache.SharedResponse) error {
	name := c.name(key)
	var h bytes.Buffer
	resp.Header.Write(&h)
	return c.f.call(ctx, func(ctx context.Context) error {
		n, err := storeScript.Run(ctx, c.f.rdb,
			[]string{name, c.claimName(name), c.prefix + "index", c.prefix + "sizes", c.prefix + "bytes"},
			resp.Status, h.Bytes(), resp.Body, max(resp.Fresh.Milliseconds(), 1), c.maxBytes, c.token, c.prefix+"filled", key).Int64()
		c.evictions.Add(float64(n))
		return err
	})
}

func (c *Cache) Release(ctx context.Context, key string) error {
	name := c.name(key)
	return c.f.call(ctx, func(ctx context.Context) error {
		return releaseScript.Run(ctx, c.f.rdb, []string{c.claimName(name)}, c.token, c.prefix+"filled", name).Err()
	})
}

// decodeLookup reads lookupScript's answer.
func decodeLookup(v []any) (*cache.SharedResponse, bool, error) {
	if len(v) == 0 {
		return nil, false, errors.New("fleet cache: empty answer")
	}
	switch v[0] {
	case int64(2):
		return nil, true, nil
	case int64(1):
	default:
		return nil, false, nil
	}
	if len(v) != 5 {
		return nil, false, fmt.Errorf("fleet cache: answer of %d fields", len(v))
	}
	status, _ := v[1].(string)
	header, _ := v[2].(string)
	body, _ := v[3].(string)
	pttl, _ := v[4].(int64)
	code, err := strconv.Atoi(status)
	if err != nil {
		return nil, false, fmt.Errorf("fleet cache: status %q", status)
	}
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(append([]byte(header), "\r\n"...)))).ReadMIMEHeader()
	if err != nil {
		return nil, false, fmt.Errorf("fleet cache: header: %w", err)
	}
	if pttl <= 0 {
		return nil, false, nil // expired between the two reads
	}
	return &cache.SharedResponse{Status: code, Header: http.Header(h), Body: []byte(body), Fresh: time.Duration(pttl) * time.Millisecond}, false, nil
}
