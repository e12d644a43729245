package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"sluice/internal/atomicfile"
)

// maxTracked caps the clients whose violations are counted; the one seen
// least recently is forgotten first. maxBans caps the bans; past it, the
// one that would end first goes.
const (
	maxTracked = 100000
	maxBans    = 100000
)

// saveDelay is how long after a change the file is written: changes in a
// burst are written once, and never on a request's path.
const saveDelay = time.Second

// MemoryBans keeps the ban list in this process, and in a file across
// restarts when it has one.
type MemoryBans struct {
	path string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	banned  map[string]Ban
	strikes *simplelru.LRU[string, []time.Time] // recent violations per client
	pending bool                                // a change is not written yet

	writeMu sync.Mutex // one file write at a time, in the order of the changes
}

var _ BanList = (*MemoryBans)(nil)

// OpenBans loads the ban list from path ("": none, nothing is kept across
// restarts); the file is written within saveDelay of a change, and by
// Flush. now is the clock (nil: time.Now).
func OpenBans(path string, log *slog.Logger, now func() time.Time) (*MemoryBans, error) {
	if now == nil {
		now = time.Now
	}
	strikes, err := simplelru.NewLRU[string, []time.Time](maxTracked, nil)
	if err != nil {
		return nil, err
	}
	b := &MemoryBans{path: path, log: log, now: now, banned: map[string]Ban{}, strikes: strikes}
	if path == "" {
		return b, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	var list []Ban
	if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, x := range list {
		if x.Until.After(now()) {
			b.banned[x.Client] = x
		}
	}
	return b, nil
}

// Banned reports whether client is banned now.
func (b *MemoryBans) Banned(_ context.Context, client string) (Ban, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	x, ok := b.banned[client]
	if ok && !b.now().Before(x.Until) {
		delete(b.banned, client)
		return Ban{}, false, nil
	}
	return x, ok, nil
}

// Strike records a violation by client and counts those within window.
func (b *MemoryBans) Strike(_ context.Context, client string, window time.Duration) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	recent, _ := b.strikes.Get(client)
	recent = slices.DeleteFunc(recent, func(t time.Time) bool { return now.Sub(t) >= window })
	recent = append(recent, now)
	b.strikes.Add(client, recent)
	return len(recent), nil
}

// Add bans b.Client until b.Until.
func (b *MemoryBans) Add(_ context.Context, x Ban) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.banned[x.Client]; !ok && len(b.banned) >= maxBans {
		b.dropSoonestLocked()
	}
	b.banned[x.Client] = x
	b.strikes.Remove(x.Client)
	b.saveLaterLocked()
	return nil
}

// Remove lifts client's ban.
func (b *MemoryBans) Remove(_ context.Context, client string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.banned[client]
	delete(b.banned, client)
	b.strikes.Remove(client)
	b.saveLaterLocked()
	return ok, nil
}

// List returns the bans in force, the soonest to end first.
func (b *MemoryBans) List(context.Context) ([]Ban, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	out := make([]Ban, 0, len(b.banned))
	for _, x := range b.banned {
		if now.Before(x.Until) {
			out = append(out, x)
		}
	}
	slices.SortFunc(out, func(a, c Ban) int { return a.Until.Compare(c.Until) })
	return out, nil
}

// dropSoonestLocked removes the ban that would end first.
func (b *MemoryBans) dropSoonestLocked() {
	var soonest string
	var at time.Time
	for c, x := range b.banned {
		if soonest == "" || x.Until.Before(at) {
			soonest, at = c, x.Until
		}
	}
	delete(b.banned, soonest)
}

func (b *MemoryBans) saveLaterLocked() {
	if b.path == "" || b.pending {
		return
	}
	b.pending = true
	time.AfterFunc(saveDelay, b.Flush)
}

// Flush writes a change not written yet now; sluice calls it as it stops.
func (b *MemoryBans) Flush() {
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	b.mu.Lock()
	if !b.pending {
		b.mu.Unlock()
		return
	}
	b.pending = false
	list := make([]Ban, 0, len(b.banned))
	for _, x := range b.banned {
		list = append(list, x)
	}
	b.mu.Unlock()
	data, _ := json.Marshal(list)
	if err := atomicfile.Write(b.path, data, 0o600); err != nil {
		b.log.Error("ban list not saved", "path", b.path, "error", err.Error())
	}
}
