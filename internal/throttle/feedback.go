package throttle

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// observeHead re-syncs the budget to the upstream's answer: its quota
// headers, and a 429 or 418 (Binance's IP ban), which pause the budget.
func (le *Lease) observeHead(status int, h http.Header, host string) {
	l, in := le.l, le.in
	in.mu.Lock()
	defer in.mu.Unlock()
	now := l.now()
	if le.spec.feedback.has(feedbackBinance) {
		if used, ok := binanceUsed(h, le.spec.cfg.Window.D()); ok {
			in.sync(now, used)
		}
	}
	if le.spec.feedback.has(feedbackShopify) {
		// "32/40": 32 of a bucket of 40 used
		if used, max, ok := strings.Cut(h.Get("X-Shopify-Shop-Api-Call-Limit"), "/"); ok {
			u, err1 := strconv.ParseFloat(used, 64)
			c, err2 := strconv.ParseFloat(max, 64)
			if err1 == nil && err2 == nil && c > 0 {
				in.reshape(c, 0) // the plan's bucket, as the store reports it
				in.sync(now, u)
			}
		}
	}
	if le.spec.feedback.has(feedbackEtsySecond) {
		in.syncLimit(now, h, "X-Limit-Per-Second", "X-Remaining-This-Second")
	}
	if le.spec.feedback.has(feedbackEtsyDay) {
		in.syncLimit(now, h, "X-Limit-Per-Day", "X-Remaining-Today")
	}
	if le.spec.feedback.has(feedbackRateLimit) {
		if used, ok := rateLimitUsed(h, in.m.Capacity()); ok {
			in.sync(now, used)
		}
	}
	switch status {
	case http.StatusTooManyRequests, http.StatusTeapot:
		d, ok := ParseRetryAfter(h.Get("Retry-After"), now)
		if !ok {
			// No Retry-After: back off, doubling while it keeps happening.
			d = max(in.backoff*2, time.Second)
			if status == http.StatusTeapot {
				d = max(d, 2*time.Minute) // Binance's shortest ban
			}
			d = min(d, 10*time.Minute)
		}
		in.backoff = d
		in.pausedUntil = now.Add(d)
		in.pause(in.pausedUntil) // every user of the budget waits (a fleet's other instances too)
		l.metrics.limited(le.spec.name, status)
		l.log.Warn("upstream rate limit: budget paused", "budget", le.spec.name, "host", host,
			"status", status, "pause", d.String())
	default:
		in.backoff = 0
	}
	in.synced, in.probing = true, false
	le.done = true
	in.report(now)
	in.dispatch(now)
}

// Release ends the lease when no response was observed (the request
// failed before the upstream answered), so that a probe does not hold the
// budget's queue forever.
func (le *Lease) Release() {
	if le == nil || le.done {
		return
	}
	l, in := le.l, le.in
	in.mu.Lock()
	defer in.mu.Unlock()
	le.done = true
	if in.probing && !in.synced {
		in.probing = false
		in.dispatch(l.now())
	}
}

// binanceUsed reads X-MBX-USED-WEIGHT-<n><unit> for the budget's window
// (1m: X-MBX-USED-WEIGHT-1M).
func binanceUsed(h http.Header, span time.Duration) (float64, bool) {
	for name, vs := range h {
		rest, ok := strings.CutPrefix(name, "X-Mbx-Used-Weight-")
		if !ok || len(vs) == 0 || intervalOf(rest) != span {
			continue
		}
		if v, err := strconv.ParseFloat(vs[0], 64); err == nil {
			return v, true
		}
	}
	return 0, false
}

// intervalOf parses Binance's interval suffix: 1S, 1M (minute), 1H, 1D;
// header canonicalisation may have lowered the unit.
func intervalOf(s string) time.Duration {
	s = strings.ToUpper(s)
	if len(s) < 2 {
		return 0
	}
	n, err := strconv.Atoi(s[:len(s)-1])
	if err != nil {
		return 0
	}
	unit := map[byte]time.Duration{'S': time.Second, 'M': time.Minute, 'H': time.Hour, 'D': 24 * time.Hour}[s[len(s)-1]]
	return time.Duration(n) * unit
}

// rateLimitUsed reads RateLimit-Remaining / X-RateLimit-Remaining (with
// -Limit, else the budget's capacity) as the amount spent.
func rateLimitUsed(h http.Header, capacity float64) (float64, bool) {
	for _, prefix := range []string{"Ratelimit-", "X-Ratelimit-", "X-Bapi-Limit-Status"} {
		rem := h.Get(prefix + "Remaining")
		if prefix == "X-Bapi-Limit-Status" {
			rem = h.Get(prefix)
		}
		r, err := strconv.ParseFloat(strings.TrimSpace(firstItem(rem)), 64)
		if err != nil {
			continue
		}
		limit := capacity
		if v, err := strconv.ParseFloat(strings.TrimSpace(firstItem(h.Get(prefix+"Limit"))), 64); err == nil && v > 0 {
			limit = v
		}
		return max(limit-r, 0), true
	}
	return 0, false
}

// syncLimit re-syncs the budget to a pair of limit and remaining headers:
// the limit is the app's plan as the upstream reports it (an app whose
// limits were raised gets them without a config change), limit less
// remaining what is spent.
func (in *instance) syncLimit(now time.Time, h http.Header, limitName, remainingName string) {
	remaining, err := strconv.ParseFloat(strings.TrimSpace(h.Get(remainingName)), 64)
	if err != nil {
		return
	}
	if limit, err := strconv.ParseFloat(strings.TrimSpace(h.Get(limitName)), 64); err == nil && limit > 0 {
		in.reshape(limit, 0)
	}
	in.sync(now, max(in.m.Capacity()-remaining, 0))
}

func firstItem(v string) string {
	v, _, _ = strings.Cut(v, ",")
	v, _, _ = strings.Cut(v, ";")
	return v
}

// ParseRetryAfter parses Retry-After: seconds or an HTTP date.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// maxCostBody bounds what is kept of a body to find its cost extension.
const maxCostBody = 1 << 20

// observeCost re-syncs a GraphQL budget to the cost extension Shopify
// reports at the end of the body:
// {"extensions":{"cost":{"throttleStatus":{"maximumAvailable":2000,
// "currentlyAvailable":1950,"restoreRate":100}}}}.
func (le *Lease) observeCost(body []byte) {
	var doc struct {
		Extensions struct {
			Cost struct {
				ThrottleStatus struct {
					MaximumAvailable   float64 `json:"maximumAvailable"`
					CurrentlyAvailable float64 `json:"currentlyAvailable"`
					RestoreRate        float64 `json:"restoreRate"`
				} `json:"throttleStatus"`
			} `json:"cost"`
		} `json:"extensions"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return
	}
	ts := doc.Extensions.Cost.ThrottleStatus
	if ts.MaximumAvailable <= 0 {
		return
	}
	l, in := le.l, le.in
	in.mu.Lock()
	defer in.mu.Unlock()
	now := l.now()
	in.reshape(ts.MaximumAvailable, ts.RestoreRate) // the store's bucket and rate, as it reports them
	in.sync(now, ts.MaximumAvailable-ts.CurrentlyAvailable)
	in.report(now)
	in.dispatch(now)
}
