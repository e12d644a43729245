package redisstore

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"sluice/internal/cache"
	"sluice/internal/store"
	"sluice/internal/testredis"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// reportLatency adds the p50 and p99 of lat to the benchmark's output.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkAcquire: one budget acquire (a window meter's Take that fits),
// in this process and in Redis on loopback; _parallel is the throughput of
// 8 goroutines sharing the budget, as the requests of one busy instance.
func BenchmarkAcquire(b *testing.B) {
	srv := testredis.Start(b)
	spec := store.MeterSpec{Model: store.Window, Limit: 1e12, Window: time.Minute}
	for _, bc := range []struct {
		name   string
		meters store.Meters
	}{{"memory", store.MemoryMeters{}}, {"redis", NewMeters(srv.Client(), "bench:")}} {
		b.Run(bc.name, func(b *testing.B) {
			m := bc.meters.Meter(b.Name(), spec)
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := m.Take(b.Context(), start, 1); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat)
		})
		b.Run(bc.name+"_parallel", func(b *testing.B) {
			m := bc.meters.Meter(b.Name(), spec)
			b.SetParallelism(4) // 8 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Take(b.Context(), time.Now(), 1); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkBanPropagation: the time from a ban on one instance to its
// refusal on another (p50, p99).
func BenchmarkBanPropagation(b *testing.B) {
	srv := testredis.Start(b)
	from := OpenBans(b.Context(), srv.Client(), "bench:", slog.New(slog.DiscardHandler), nil)
	defer from.Close()
	to := OpenBans(b.Context(), srv.Client(), "bench:", slog.New(slog.DiscardHandler), nil)
	defer to.Close()
	var lat []time.Duration
	i := 0
	for b.Loop() {
		i++
		client := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		start := time.Now()
		if err := from.Add(b.Context(), store.Ban{Client: client, Until: start.Add(time.Hour)}); err != nil {
			b.Fatal(err)
		}
		for {
			if _, ok, _ := to.Banned(b.Context(), client); ok {
				break
			}
			if time.Since(start) > 5*time.Second {
				b.Fatalf("ban %s not seen after 5 s", client)
			}
			time.Sleep(20 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	reportLatency(b, lat)
}

// BenchmarkFullWindowWait: a Wait on a window spent to its limit by 6,000
// spendings (Binance's 6,000 weight a minute, one at a time), which must
// find when enough of them leave.
func BenchmarkFullWindowWait(b *testing.B) {
	srv := testredis.Start(b)
	spec := store.MeterSpec{Model: store.Window, Limit: 6000, Window: time.Minute}
	m := NewMeters(srv.Client(), "bench:").Meter("full", spec)
	start := time.Now()
	for i := range 6000 {
		if _, err := m.Take(b.Context(), start.Add(time.Duration(i)*time.Millisecond), 1); err != nil {
			b.Fatal(err)
		}
	}
	now := start.Add(6 * time.Second)
	var lat []time.Duration
	for b.Loop() {
		t := time.Now()
		if d, err := m.Wait(b.Context(), now, 1); err != nil || d == 0 {
			b.Fatalf("wait %v, %v on a full window", d, err)
		}
		lat = append(lat, time.Since(t))
	}
	reportLatency(b, lat)
}

// BenchmarkFleetCacheLookup: a local miss answered by the fleet cache (a
// 2 KB response another instance stored), against Redis on loopback.
func BenchmarkFleetCacheLookup(b *testing.B) {
	srv := testredis.Start(b)
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	f, err := NewFleet(opts, "bench", time.Second, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	c, err := f.Cache(b.Context(), 1<<20, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	resp := &cache.SharedResponse{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: make([]byte, 2048), Fresh: time.Hour}
	if err := c.Store(b.Context(), "GET api.test/ticker", resp); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for b.Loop() {
		t := time.Now()
		if got, _, err := c.Lookup(b.Context(), "GET api.test/ticker", time.Second); err != nil || got == nil {
			b.Fatalf("lookup: %v, %v", got, err)
		}
		lat = append(lat, time.Since(t))
	}
	reportLatency(b, lat)
}
