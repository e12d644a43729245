package store_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"sluice/internal/store"
	"sluice/internal/store/storetest"
)

func TestMemoryMeters(t *testing.T) {
	storetest.Meters(t, func(*testing.T) store.Meters { return store.MemoryMeters{} })
}

func TestMemoryBans(t *testing.T) {
	storetest.BanList(t, func(t *testing.T, now func() time.Time) store.BanList {
		b, err := store.OpenBans(filepath.Join(t.TempDir(), "bans.json"), slog.New(slog.DiscardHandler), now)
		t.Cleanup(b.Flush)
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

// TestBansPersist: the file keeps the bans in force across a restart.
func TestBansPersist(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "bans.json")
	b, err := store.OpenBans(path, slog.New(slog.DiscardHandler), clock)
	if err != nil {
		t.Fatal(err)
	}
	b.Add(t.Context(), store.Ban{Client: "192.0.2.9", Until: now.Add(time.Hour), Reason: "test"})
	b.Add(t.Context(), store.Ban{Client: "192.0.2.8", Until: now.Add(time.Minute), Reason: "test"})
	b.Flush() // as sluice does when it stops
	now = now.Add(2 * time.Minute)
	again, err := store.OpenBans(path, slog.New(slog.DiscardHandler), clock)
	if err != nil {
		t.Fatal(err)
	}
	if list, _ := again.List(t.Context()); len(list) != 1 || list[0].Client != "192.0.2.9" {
		t.Errorf("after a restart: %+v, want the one ban still in force", list)
	}
}

// TestBansCapped: past maxBans the ban that would end first goes.
func TestBansCapped(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	b, err := store.OpenBans("", slog.New(slog.DiscardHandler), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	const n = 100000
	for i := range n + 1 {
		b.Add(t.Context(), store.Ban{Client: fmt.Sprintf("c%d", i), Until: now.Add(time.Hour + time.Duration(i)*time.Second)})
	}
	list, _ := b.List(t.Context())
	if len(list) != n || list[0].Client != "c1" {
		t.Errorf("%d bans, the soonest %q; want %d, c0 dropped", len(list), list[0].Client, n)
	}
}
