// Package bodymem accounts the memory of request bodies that stages read
// whole (the rules' JSON checks, the body stage before the budget), so
// that all of them together stay within limits.buffered_bodies however
// many clients send at once.
//
// The slow-body stage opens an account for each request (With) and closes
// it when the request ends; a stage that reads a body whole calls ReadAll,
// which reserves the memory as it reads, or stops with ErrFull.
//
// Metrics (registered by the caller): sluice_proxy_buffered_body_bytes,
// sluice_proxy_bodies_over_memory_total.
package bodymem

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Pool is the memory all accounts hold together. It is safe for
// concurrent use.
type Pool struct {
	used atomic.Int64
	// gauge follows used; full counts the reads stopped for want of memory.
	gauge prometheus.Gauge
	full  prometheus.Counter
}

// NewPool returns a pool that reports to gauge and full.
func NewPool(gauge prometheus.Gauge, full prometheus.Counter) *Pool {
	return &Pool{gauge: gauge, full: full}
}

// take reserves n bytes if that keeps the total within max.
func (p *Pool) take(n, max int64) bool {
	for {
		u := p.used.Load()
		if u+n > max {
			return false
		}
		if p.used.CompareAndSwap(u, u+n) {
			p.gauge.Add(float64(n))
			return true
		}
	}
}

func (p *Pool) release(n int64) {
	if n > 0 {
		p.used.Add(-n)
		p.gauge.Sub(float64(n))
	}
}

// account is one request's share of a pool, held until the request ends.
type account struct {
	pool *Pool
	max  int64 // limits.buffered_bodies in force for the request
	held atomic.Int64
}

type accountKey struct{}

// With returns ctx with an account on p under max for one request, and
// the func that gives its memory back once the request is done.
func With(ctx context.Context, p *Pool, max int64) (context.Context, func()) {
	a := &account{pool: p, max: max}
	return context.WithValue(ctx, accountKey{}, a), func() { p.release(a.held.Swap(0)) }
}

// ErrFull is ReadAll's error when the pool has no room for the body.
var ErrFull = errors.New("the memory for request bodies read whole (limits.buffered_bodies) is in use")

// ReadAll reads body (of size bytes, -1 when unknown) whole if it is at
// most limit bytes, reserving its memory on ctx's account as it grows. It
// returns what it read and whether that is the whole body: not when the
// body is longer than limit (buf then holds limit+1 bytes), nor with
// ErrFull, when the pool has no room (buf holds what was read). The rest
// is still in body. Without an account on ctx, nothing is reserved.
func ReadAll(ctx context.Context, body io.Reader, size, limit int64) (buf []byte, whole bool, err error) {
	a, _ := ctx.Value(accountKey{}).(*account)
	for {
		if len(buf) == cap(buf) {
			grow := int64(64 << 10) // unknown size: in steps, doubling
			if size >= 0 {
				grow = size + 1 - int64(len(buf)) // one more byte sees the end
			} else if c := int64(cap(buf)); c > grow {
				grow = c
			}
			grow = min(grow, limit+1-int64(len(buf)))
			if grow <= 0 {
				return buf, false, nil // longer than limit
			}
			if a != nil {
				if !a.pool.take(grow, a.max) {
					a.pool.full.Inc()
					return buf, false, ErrFull
				}
				a.held.Add(grow)
			}
			buf = slices.Grow(buf, int(grow))
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case errors.Is(err, io.EOF):
			return buf, int64(len(buf)) <= limit, nil
		case err != nil:
			return buf, false, err
		}
	}
}
