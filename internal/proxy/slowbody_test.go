package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// trickle is a request body that sends head at once, then one byte every
// gap, up to 400 bytes: a slow-body attack that ends by itself.
type trickle struct {
	head []byte
	gap  time.Duration
	sent int
	stop chan struct{}
}

func newTrickle(head []byte, gap time.Duration) *trickle {
	return &trickle{head: head, gap: gap, stop: make(chan struct{})}
}

func (b *trickle) Read(p []byte) (int, error) {
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	if b.sent >= 400 {
		return 0, io.EOF
	}
	select {
	case <-time.After(b.gap):
	case <-b.stop:
		return 0, io.ErrClosedPipe
	}
	b.sent++
	p[0] = 'x'
	return 1, nil
}

func (b *trickle) Close() error {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	return nil
}

// slowBodyHarness has an intercepted host (api.test) and a plain one
// (plain.test, for absolute-URI requests), both of whose upstreams read
// the whole body.
func slowBodyHarness(t *testing.T, extra ...string) *harness {
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "read %d bytes", n)
	})
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, upstream, "api.test")
	plain, _ := plainEntry(t, "plain.test", upstream)
	hosts := upstreamEntry(t, "api.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()) + plain
	return newHarness(t, hosts, extra...)
}

// TestSlowBodyLimits: a body that trickles below limits.body_min_rate, or
// that sends fast but outlasts timeouts.body, is answered 408 naming the
// limit, over HTTP/1.1 and HTTP/2 through CONNECT and as an absolute-URI
// request; one that sends fast first and then trickles is cut off too,
// while a body at a fair rate passes.
func TestSlowBodyLimits(t *testing.T) {
	h := slowBodyHarness(t, "limits: {body_min_rate: 200, body_rate_window: 300ms}", "timeouts: {body: 1s}")
	for _, tt := range []struct {
		name string
		body func() io.ReadCloser
		key  string // the limit named in the 408; "" for a 200
	}{
		{"trickle", func() io.ReadCloser { return newTrickle(nil, 40*time.Millisecond) }, "limits.body_min_rate"},
		{"fast then trickle", func() io.ReadCloser { return newTrickle(bytes.Repeat([]byte("a"), 256<<10), 40*time.Millisecond) }, "limits.body_min_rate"},
		{"fair rate, too long", func() io.ReadCloser { return &paced{chunk: 200, gap: 100 * time.Millisecond, chunks: 100} }, "timeouts.body"},
		{"fair rate", func() io.ReadCloser { return &paced{chunk: 200, gap: 100 * time.Millisecond, chunks: 3} }, ""},
		// 16 MiB at about 10 MiB/s outlasts timeouts.body alone; an upload
		// this fast moves the deadline on.
		{"large and fast", func() io.ReadCloser { return &paced{chunk: 256 << 10, gap: 25 * time.Millisecond, chunks: 64} }, ""},
	} {
		for _, entry := range []struct {
			name, url string
			h2        bool
		}{
			{"CONNECT h1", "https://api.test/upload", false},
			{"CONNECT h2", "https://api.test/upload", true},
			{"absolute-URI", "http://plain.test/upload", false},
		} {
			t.Run(tt.name+"/"+entry.name, func(t *testing.T) {
				body := tt.body()
				defer body.Close()
				req, _ := http.NewRequest(http.MethodPost, entry.url, body)
				start := time.Now()
				resp, err := h.client(entry.h2).Do(req)
				if err != nil {
					t.Fatalf("POST %s: %v", entry.url, err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				took := time.Since(start)
				if tt.key == "" {
					if resp.StatusCode != http.StatusOK {
						t.Errorf("POST %s at a fair rate: %d %s, want 200", entry.url, resp.StatusCode, got)
					}
					return
				}
				if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(got), tt.key) {
					t.Errorf("POST %s: %d %s, want 408 naming %s", entry.url, resp.StatusCode, got, tt.key)
				}
				if took > 5*time.Second {
					t.Errorf("POST %s: the 408 came after %s; the limits cut the body off within a second", entry.url, took)
				}
			})
		}
	}
	testenv.WaitFor(t, 5*time.Second, "access lines of the 408s", func() bool {
		n := 0
		for _, l := range h.accessLines() {
			if l["status"] == float64(http.StatusRequestTimeout) && l["reason"] == "request body timed out" {
				n++
			}
		}
		return n >= 9
	})
}

// paced sends chunks of chunk bytes, gap apart.
type paced struct {
	chunk, chunks int
	gap           time.Duration
	sent          int // chunks begun
	left          int // bytes of the current chunk still to send
}

func (b *paced) Read(p []byte) (int, error) {
	if b.left == 0 {
		if b.sent == b.chunks {
			return 0, io.EOF
		}
		if b.sent > 0 {
			time.Sleep(b.gap)
		}
		b.sent++
		b.left = b.chunk
	}
	n := copy(p, bytes.Repeat([]byte("p"), min(b.left, len(p))))
	b.left -= n
	return n, nil
}

func (b *paced) Close() error { return nil }

// TestTricklingBodiesHoldBoundedMemory: 200 clients that each send most of
// a 1 MB body at once and then stall hold no more than
// limits.buffered_bodies of sluice's memory for their bodies, and all are
// cut off.
func TestTricklingBodiesHoldBoundedMemory(t *testing.T) {
	const clients, size = 200, 1_000_000
	h := slowBodyHarness(t, "limits: {buffered_bodies: 16MiB, body_rate_window: 1s, connections_per_client: 0}")
	heap := func() uint64 {
		runtime.GC()
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	before := heap()
	head := bytes.Repeat([]byte("b"), size-1000)
	var wg sync.WaitGroup
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", h.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		defer c.Close()
		wg.Go(func() {
			fmt.Fprintf(c, "POST http://plain.test/upload HTTP/1.1\r\nHost: plain.test\r\nContent-Length: %d\r\n\r\n", size)
			c.Write(head)
		})
	}
	wg.Wait()
	// Every head is sent: the bodies are in sluice's hands, or streaming.
	peak := heap()
	testenv.WaitFor(t, 10*time.Second, "every client answered", func() bool {
		if now := heap(); now > peak {
			peak = now
		}
		return h.metric("sluice_proxy_buffered_body_bytes", "", "") == 0
	})
	grew := int64(peak) - int64(before)
	t.Logf("heap grew by %d MiB at most with 200 bodies of 1 MB held", grew>>20)
	if grew > 64<<20 {
		t.Errorf("200 clients each holding 1 MB of body grew the heap by %d MiB; limits.buffered_bodies is 16 MiB", grew>>20)
	}
	if n := h.metric("sluice_proxy_bodies_over_memory_total", "", ""); n == 0 {
		t.Errorf("sluice_proxy_bodies_over_memory_total = 0 with 200 MB of bodies over a 16 MiB cap")
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("client %d: no answer: %v", i, err)
		}
		if resp.StatusCode != http.StatusRequestTimeout {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("client %d: %d %s, want 408", i, resp.StatusCode, b)
		}
	}
}

// TestRulesRefuseBodiesOverMemory: where a rule set must read bodies whole
// (JSON checks) and limits.buffered_bodies is held by other bodies, a body
// is refused with 503 and the reason, never forwarded unchecked and never
// read past the cap.
func TestRulesRefuseBodiesOverMemory(t *testing.T) {
	forwarded := make(chan struct{}, 10)
	plain, _ := plainEntry(t, "node.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { forwarded <- struct{}{} }), "    rules: json\n")
	h := newHarness(t, plain, "limits: {buffered_bodies: 2MiB}", "rule_sets:\n  json:\n    json_max_depth: 8")
	post := func() net.Conn {
		c, err := net.Dial("tcp", h.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "POST http://node.test/v1/chain/push_transaction HTTP/1.1\r\nHost: node.test\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"a\":")
		return c
	}
	// Two bodies that stall hold 1,000,001 bytes each of the 2 MiB.
	post()
	post()
	testenv.WaitFor(t, 5*time.Second, "two bodies held", func() bool { return h.metric("sluice_proxy_buffered_body_bytes", "", "") >= 2_000_000 })
	c := post()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a third body over the memory cap: no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "limits.buffered_bodies") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a third body over the memory cap: %d %s, want 503 naming limits.buffered_bodies, with Retry-After", resp.StatusCode, body)
	}
	if n := h.metric("sluice_proxy_bodies_over_memory_total", "", ""); n != 1 {
		t.Errorf("sluice_proxy_bodies_over_memory_total = %v, want 1", n)
	}
	if len(forwarded) != 0 {
		t.Errorf("%d bodies reached the upstream unchecked", len(forwarded))
	}
}

// TestConnectionsPerClient: past limits.connections_per_client a client's
// new connection is refused with a 429 that names the limit, counted; one
// that closes gives its place back.
func TestConnectionsPerClient(t *testing.T) {
	h := slowBodyHarness(t, "limits: {connections_per_client: 3}")
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", h.proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	get := func() (*http.Response, string, error) {
		c, err := net.Dial("tcp", h.proxyAddr)
		if err != nil {
			return nil, "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "GET http://plain.test/ HTTP/1.1\r\nHost: plain.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return nil, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b), nil
	}
	// The three held connections are counted once the server accepted them.
	testenv.WaitFor(t, 5*time.Second, "a fourth connection refused", func() bool {
		resp, _, err := get()
		return err == nil && resp.StatusCode == http.StatusTooManyRequests
	})
	resp, body, err := get()
	if err != nil || resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "limits.connections_per_client") {
		t.Fatalf("a fourth connection: %v %v %s, want 429 naming limits.connections_per_client", resp, err, body)
	}
	var e struct{ Error string }
	if json.Unmarshal([]byte(body), &e) != nil || e.Error != "too many connections" {
		t.Errorf("refusal body %s: want JSON with error \"too many connections\"", body)
	}
	if n := h.metric("sluice_proxy_connections_refused_total", "listener", "proxy"); n < 2 {
		t.Errorf("sluice_proxy_connections_refused_total{listener=proxy} = %v, want at least 2", n)
	}
	held[0].Close()
	testenv.WaitFor(t, 5*time.Second, "a place given back", func() bool {
		resp, _, err := get()
		return err == nil && resp.StatusCode == http.StatusOK
	})
}
