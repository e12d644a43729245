package soak

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"sluice/internal/testpki"
)

// bareServer, when set (a directory holding cert.pem and key.pem), makes
// the test binary the bare HTTPS server BenchmarkScale measures sluice
// against, instead of running tests.
const bareServer = "SLUICE_BARE_SERVER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(bareServer); dir != "" {
		if err := serveBare(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveBare answers as the test exchange does, over TLS with HTTP/2, on
// a loopback port it prints first.
func serveBare(dir string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	return (&http.Server{Handler: &exchange{}}).ServeTLS(ln, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
}

// bare is the bare server's process.
type bare struct {
	addr  string
	roots *x509.CertPool
	pid   int
}

func startBare(b *testing.B) *bare {
	ca := testpki.NewCA(b, "bare server CA")
	leaf := ca.Leaf(b, "api.binance.com")
	key, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	for name, block := range map[string]*pem.Block{"cert.pem": {Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}, "key.pem": {Type: "PRIVATE KEY", Bytes: key}} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), bareServer+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("the bare server did not say its address: %v", err)
	}
	return &bare{addr: strings.TrimSpace(addr), roots: ca.Pool(), pid: cmd.Process.Pid}
}

// transport reaches the bare server, whatever the address asked for.
func (s *bare) transport() *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, s.addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: s.roots},
	}
}

// cpu is the CPU seconds the bare server has used (user and system).
func (s *bare) cpu() (float64, error) {
	p, err := procfs.NewProc(s.pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.CPUTime(), nil
}
