package app

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"sluice/internal/cache"
)

// TestIdleMemoryIsReturned: memory a burst left behind as garbage goes back
// to the system once nothing has collected it for the idle period, even
// though nothing allocates to trigger a collection.
func TestIdleMemoryIsReturned(t *testing.T) {
	c, err := cache.New(cache.Options{MaxBytes: 1 << 20, MaxObjectBytes: 1 << 10, FetchTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Only tuneMemory may collect: automatic collections off, and a live
	// heap large enough that its memory limit is not reached either.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	burst := make([][]byte, 48)
	for i := range burst {
		burst[i] = make([]byte, 1<<20)
	}
	runtime.GC()
	samples := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(samples)
	forced, released := samples[0].Value.Uint64(), samples[1].Value.Uint64()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tuneMemory(ctx, c, time.Second) }()
	defer func() { cancel(); <-done }()
	runtime.KeepAlive(burst)
	burst = nil // the burst is over: 48 MiB of garbage
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		metrics.Read(samples)
		if samples[0].Value.Uint64() > forced && samples[1].Value.Uint64() >= released+32<<20 {
			return
		}
	}
	t.Errorf("5 s after a burst: %d forced collections, %d MiB more released to the system; want the burst's memory back",
		samples[0].Value.Uint64()-forced, (int64(samples[1].Value.Uint64())-int64(released))>>20)
}
