package ca

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkMint measures minting a new leaf (key generation and signing);
// BenchmarkLeafCached a handshake's lookup of an already minted one.
func BenchmarkMint(b *testing.B) {
	root, err := OpenRoot(b.TempDir(), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for b.Loop() {
		if _, err := root.Sign([]string{"api.binance.com"}, now, 7*24*time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLeafCached(b *testing.B) {
	root, err := OpenRoot(b.TempDir(), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	a, err := New(root, Options{Allow: func(string) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	hosts := make([]string, 64)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("h%d.test", i)
		a.Leaf(hosts[i])
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := a.Leaf(hosts[i%len(hosts)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
