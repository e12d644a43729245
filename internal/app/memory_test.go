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

// TestMemoryLimitLeavesRoom: whatever else the runtime holds (a crowd of
// connections' stacks, metadata), the limit lets the heap grow to twice
// the live heap plus the stacks before it binds, as GOGC=100 would; a
// large cache gets twice its bytes; a small process gets the floor.
func TestMemoryLimitLeavesRoom(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		name  string
		m     runtimeMemory
		cache int64
		room  int64 // what the heap may hold when the limit binds, at least
	}{
		{"500 bots", runtimeMemory{live: 12 * mib, objects: 16 * mib, free: 3 * mib, stacks: 9 * mib, total: 45 * mib}, 2 * mib, 2*12*mib + 9*mib},
		{"large cache", runtimeMemory{live: 70 * mib, objects: 80 * mib, stacks: 1 * mib, total: 90 * mib}, 64 * mib, 2 * 70 * mib},
		{"cache over half the heap", runtimeMemory{live: 70 * mib, objects: 80 * mib, stacks: 1 * mib, total: 90 * mib}, 100 * mib, 200 * mib},
	} {
		limit := memoryLimit(tt.m, tt.cache)
		overhead := tt.m.total - tt.m.released - tt.m.objects - tt.m.free
		if room := limit - overhead; room < tt.room {
			t.Errorf("%s: limit %d MiB leaves the heap %d MiB besides %d MiB of stacks, metadata and fragmentation; want at least %d MiB",
				tt.name, limit/mib, room/mib, overhead/mib, tt.room/mib)
		}
	}
	small := runtimeMemory{live: 2 * mib, objects: 3 * mib, stacks: mib, total: 8 * mib}
	if limit := memoryLimit(small, 0); limit != minMemoryLimit {
		t.Errorf("a small process's limit is %d MiB; want the floor, %d MiB", limit/mib, minMemoryLimit/mib)
	}
}
