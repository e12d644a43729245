package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// TestMain lets the test binary be sluice itself, so that a benchmark can
// measure the memory of a real sluice process and not its own.
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startSluice runs sluice in a process of its own (this test binary as
// main), in front of an HTTP/1.1 upstream for api.test that answers "ok"
// once it has read the whole request, and returns its pid, its proxy address and
// the roots that trust its CA.
func startSluice(b *testing.B) (pid int, proxyAddr string, roots *x509.CertPool) {
	upCA := testpki.NewCA(b, "upstream CA")
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	// HTTP/1.1, as many API fronts are: one connection per request in flight.
	up.TLS = &tls.Config{Certificates: []tls.Certificate{upCA.Leaf(b, "api.test")}}
	up.StartTLS()
	b.Cleanup(up.Close)
	dir := b.TempDir()
	port := testenv.FreePort(b)
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, `listen: {proxy: 127.0.0.1:%d, admin: "off"}
data_dir: %s
log: {level: warn}
hosts:
  api.test:
    upstream_ca: %s
    connect_to: %s
    allow_private: true
`, port, filepath.Join(dir, "data"), upCA.WritePEM(b, dir), up.Listener.Addr()), 0o644)
	cmd := exec.Command(os.Args[0], "run", "-c", cfg)
	cmd.Env = append(os.Environ(), "SLUICE_TEST_RUN_MAIN=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	proxyAddr = fmt.Sprintf("127.0.0.1:%d", port)
	testenv.WaitListening(b, proxyAddr)
	caPEM, err := os.ReadFile(filepath.Join(dir, "data", "ca.pem"))
	if err != nil {
		b.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return cmd.Process.Pid, proxyAddr, roots
}

// BenchmarkSlowClientsFDs: 600 clients each send a POST whose 100-byte
// body comes one byte a second; it reports sluice's open file descriptors
// before and while they send, and upstream connections held (sluice's
// FDs beyond one per client and its idle ones).
func BenchmarkSlowClientsFDs(b *testing.B) {
	const clients = 600
	pid, proxyAddr, roots := startSluice(b)
	fds := func() float64 {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			b.Fatal(err)
		}
		return float64(len(ents))
	}
	for b.Loop() {
		held := open(b, proxyAddr, roots, 1)
		held[0].Close()
		time.Sleep(time.Second)
		idle := fds()
		b.ReportMetric(idle, "idle-fds")
		conns := make([]net.Conn, clients)
		for i := range conns {
			c, err := interceptedConn(proxyAddr, roots)
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprint(c, "POST /api/v3/order HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\ns")
			conns[i] = c
		}
		for range 5 {
			time.Sleep(time.Second)
			for _, c := range conns {
				c.Write([]byte("y"))
			}
		}
		slow := fds()
		b.ReportMetric(slow, "slow-fds")
		b.ReportMetric(slow-idle-clients, "beyond-one-per-client-fds")
		for _, c := range conns {
			c.Close()
		}
	}
}

// BenchmarkConnFloodRSS: 10,000 intercepted TLS connections (each with one
// request answered) held open at once, then closed; it reports sluice's
// resident memory before, with all of them open, and 1 s, 10 s, 30 s and
// 60 s after they closed. The figures are those of a separate sluice
// process; run it with -benchtime 1x.
func BenchmarkConnFloodRSS(b *testing.B) {
	const conns = 10000
	pid, proxyAddr, roots := startSluice(b)
	rss := func() float64 { return float64(residentBytes(b, pid)) / (1 << 20) }

	for b.Loop() {
		open(b, proxyAddr, roots, 1) // the CA's leaf for api.test is minted
		time.Sleep(2 * time.Second)
		b.ReportMetric(rss(), "idle-MiB")
		held := open(b, proxyAddr, roots, conns)
		b.ReportMetric(rss(), "open-MiB")
		for _, c := range held {
			c.Close()
		}
		closed := time.Now()
		for _, at := range []time.Duration{1, 10, 30, 60} {
			time.Sleep(time.Until(closed.Add(at * time.Second)))
			b.ReportMetric(rss(), fmt.Sprintf("after%ds-MiB", at))
		}
	}
}

// open makes n intercepted connections to api.test through proxyAddr,
// 200 at a time, each with one request answered, and returns them open.
func open(b *testing.B, proxyAddr string, roots *x509.CertPool, n int) []net.Conn {
	b.Helper()
	conns := make([]net.Conn, n)
	work := make(chan int)
	var wg sync.WaitGroup
	var failed sync.Once
	for range min(n, 200) {
		wg.Go(func() {
			for i := range work {
				c, err := interceptedGET(proxyAddr, roots)
				if err != nil {
					failed.Do(func() { b.Errorf("connection %d: %v", i, err) })
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return conns
}

// interceptedConn is a TLS connection to api.test through sluice.
func interceptedConn(proxyAddr string, roots *x509.CertPool) (net.Conn, error) {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Conn, error) { c.Close(); return nil, err }
	fmt.Fprint(c, "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("CONNECT: %s", resp.Status))
	}
	tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: "api.test", NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		return fail(err)
	}
	return tc, nil
}

func interceptedGET(proxyAddr string, roots *x509.CertPool) (net.Conn, error) {
	tc, err := interceptedConn(proxyAddr, roots)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Conn, error) { tc.Close(); return nil, err }
	fmt.Fprint(tc, "GET /api/v3/time HTTP/1.1\r\nHost: api.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return fail(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("GET: %s", resp.Status))
	}
	return tc, nil
}

// residentBytes is a process's VmRSS.
func residentBytes(b *testing.B, pid int) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/pid/status")
	return 0
}
