package streams

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"sluice/internal/testpki"
)

// floorReaders, when set (address, client count, CA file), makes the test
// binary the floor benchmark's clients instead of running tests.
const floorReaders = "SLUICE_FLOOR_READERS"

func TestMain(m *testing.M) {
	if spec := os.Getenv(floorReaders); spec != "" {
		if err := readBursts(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// readBursts connects the clients and reads until the benchmark closes
// them.
func readBursts(spec string) error {
	var addr, caFile string
	var n int
	if _, err := fmt.Sscan(spec, &addr, &n, &caFile); err != nil {
		return fmt.Errorf("%s=%q: %w", floorReaders, spec, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	var wg sync.WaitGroup
	for range n {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "floor.test"})
		if err != nil {
			return err
		}
		wg.Go(func() { io.Copy(io.Discard, c) })
	}
	wg.Wait()
	return nil
}

// BenchmarkBurstFloor is the floor under sluice's stream delay
// (sluice_streams_delivery_delay_seconds) on the machine it runs on: a
// burst of bytes written to every client over TLS on loopback, with one
// writer goroutine per client woken at once, as sluice's sessions are,
// and the clients in another process, as bots are. It leaves out all that
// sluice does besides (reading the exchange, framing, fanning out), so
// sluice's delay cannot be lower. The rows are the bench harness's 20-bot
// load: combined layout (20 connections, about 24 kB each per 100 ms
// burst) and ccxt layout (its depth streams: 400 connections, one 1 kB
// event each). Metrics: per-delivery p99 and share within 1 ms, and the
// last client's p99. Run it beside the harness's direct load
// (docs/bench/ws-floor.sh) to compare with sluice in one run.
func BenchmarkBurstFloor(b *testing.B) {
	for _, tt := range []struct{ clients, bytes int }{{20, 24000}, {400, 1000}} {
		b.Run(fmt.Sprintf("clients=%d/bytes=%d", tt.clients, tt.bytes), func(b *testing.B) {
			burstFloor(b, tt.clients, tt.bytes)
		})
	}
}

func burstFloor(b *testing.B, clients, size int) {
	ca := testpki.NewCA(b, "floor CA")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Leaf(b, "floor.test")}})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	readers := exec.Command(self)
	readers.Env = append(os.Environ(), floorReaders+"="+ln.Addr().String()+" "+strconv.Itoa(clients)+" "+ca.WritePEM(b, b.TempDir()))
	readers.Stderr = os.Stderr
	if err := readers.Start(); err != nil {
		b.Fatal(err)
	}
	defer readers.Wait()

	burst := make([]byte, size)
	done := make(chan time.Duration, clients)
	wakes := make([]chan time.Time, clients)
	var writers sync.WaitGroup
	for i := range wakes {
		c, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		if err := c.(*tls.Conn).Handshake(); err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		wake := make(chan time.Time, 1)
		wakes[i] = wake
		writers.Go(func() {
			for at := range wake {
				if _, err := c.Write(burst); err != nil {
					b.Error(err)
				}
				done <- time.Since(at)
			}
		})
	}
	defer writers.Wait()
	defer func() {
		for _, w := range wakes {
			close(w)
		}
	}()

	var each, last []time.Duration
	for b.Loop() {
		b.StopTimer()
		time.Sleep(100 * time.Millisecond) // the exchange's cadence, not flat out
		b.StartTimer()
		at := time.Now()
		for _, w := range wakes {
			w <- at
		}
		var slowest time.Duration
		for range clients {
			d := <-done
			each = append(each, d)
			slowest = max(slowest, d)
		}
		last = append(last, slowest)
	}
	slices.Sort(each)
	slices.Sort(last)
	within, _ := slices.BinarySearch(each, time.Millisecond+1)
	b.ReportMetric(float64(each[len(each)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(100*float64(within)/float64(len(each)), "%-within-1ms")
	b.ReportMetric(float64(last[len(last)*99/100].Microseconds()), "last-p99-µs")
}
