package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"sluice/internal/testenv"
)

// TestMain lets a test run sluice in a child process (to kill it -9).
func TestMain(m *testing.M) {
	if args := os.Getenv("SLUICE_APP_CHILD"); args != "" {
		err := Run(context.Background(), strings.Fields(args), os.Stdout, os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sluice:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mirror serves one large .deb over plain HTTP; with gate set, it stops
// halfway until the gate opens.
type mirror struct {
	srv  *httptest.Server
	body []byte
	gets atomic.Int64
	mu   sync.Mutex
	gate chan struct{}
}

func newMirror(t *testing.T, size int) *mirror {
	m := &mirror{body: bytes.Repeat([]byte("0123456789abcdef"), size/16)}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.gets.Add(1)
		w.Header().Set("Content-Length", fmt.Sprint(len(m.body)))
		half := len(m.body) / 2
		w.Write(m.body[:half])
		m.mu.Lock()
		gate := m.gate
		m.mu.Unlock()
		if gate != nil {
			w.(http.Flusher).Flush()
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		w.Write(m.body[half:])
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func viaProxy(proxyAddr string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr})}}
}

func fetchDeb(t *testing.T, c *http.Client) (string, []byte, error) {
	resp, err := c.Get("http://mirror.test/pool/main/b/big/big_1.0_amd64.deb")
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.Header.Get("X-Cache"), b, err
}

// TestBlobsCLI: a fetched package shows in `sluice blobs ls` and goes with
// `sluice blobs rm --all`.
func TestBlobsCLI(t *testing.T) {
	m := newMirror(t, 1<<20)
	r := startRun(t, fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\ndata_dir: data\nhosts:\n  mirror.test: {plain_http: true, connect_to: %s, allow_private: true}\n", m.srv.Listener.Addr()))
	c := viaProxy(r.addrs["proxy"])
	for _, want := range []string{"MISS", "HIT"} {
		if xc, b, err := fetchDeb(t, c); err != nil || xc != want || !bytes.Equal(b, m.body) {
			t.Fatalf("fetch: X-Cache %q err %v, want %s and the whole file", xc, err, want)
		}
	}
	cli := r.cliConfig()
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"blobs", "-c", cli, "ls"}, &out, io.Discard); err != nil {
		t.Fatalf("blobs ls: %v", err)
	}
	sum := sha256.Sum256(m.body)
	if !strings.Contains(out.String(), "mirror.test:80/pool/main/b/big/big_1.0_amd64.deb") || !strings.Contains(out.String(), fmt.Sprintf("sha256:%x", sum[:6])) {
		t.Errorf("blobs ls:\n%s", out.String())
	}
	out.Reset()
	if err := Run(context.Background(), []string{"blobs", "--json", "-c", cli, "ls"}, &out, io.Discard); err != nil || !json.Valid(out.Bytes()) || !strings.Contains(out.String(), `"entries"`) {
		t.Errorf("blobs --json ls: %v %s", err, out.String())
	}
	out.Reset()
	if err := Run(context.Background(), []string{"blobs", "rm", "-c", cli, "--all"}, &out, io.Discard); err != nil || strings.TrimSpace(out.String()) != "removed 1 file" {
		t.Fatalf("blobs rm --all: %v %s", err, out.String())
	}
	if xc, _, _ := fetchDeb(t, c); xc != "MISS" {
		t.Errorf("after rm --all: X-Cache %q, want MISS", xc)
	}
}

func readFile(t testing.TB, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestKillMidDownload: sluice killed (-9) halfway through a download leaves
// nothing that a restarted sluice would serve; it fetches the file again.
func TestKillMidDownload(t *testing.T) {
	m := newMirror(t, 8<<20)
	gate := make(chan struct{})
	m.gate = gate
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sluice.yaml")
	port := testenv.FreePort(t)
	os.WriteFile(cfg, []byte(fmt.Sprintf("listen: {proxy: 127.0.0.1:%d, admin: \"off\"}\ndata_dir: data\nhosts:\n  mirror.test: {plain_http: true, connect_to: %s, allow_private: true}\n", port, m.srv.Listener.Addr())), 0o644)
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "SLUICE_APP_CHILD=run -c "+cfg)
		cmd.Stderr = t.Output()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		testenv.WaitListening(t, fmt.Sprintf("127.0.0.1:%d", port))
		return cmd
	}
	child := start()
	c := viaProxy(fmt.Sprintf("127.0.0.1:%d", port))
	done := make(chan error, 1)
	go func() { _, _, err := fetchDeb(t, c); done <- err }()
	testenv.WaitFor(t, 10*time.Second, "the download upstream", func() bool { return m.gets.Load() > 0 })
	tmp := filepath.Join(dir, "data", "blobs", "tmp")
	for range 400 { // until half the file is on sluice's disk
		if es, _ := os.ReadDir(tmp); len(es) == 1 {
			if fi, err := es[0].Info(); err == nil && fi.Size() >= int64(len(m.body)/2) {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	<-done
	m.mu.Lock()
	m.gate = nil
	m.mu.Unlock()
	close(gate)

	child = start()
	defer func() { child.Process.Signal(syscall.SIGTERM); child.Wait() }()
	xc, b, err := fetchDeb(t, c)
	if err != nil || xc != "MISS" || !bytes.Equal(b, m.body) {
		t.Errorf("after the kill and a restart: X-Cache %q, %d bytes, err %v; want a new whole download", xc, len(b), err)
	}
	if leftovers, _ := os.ReadDir(tmp); len(leftovers) != 0 {
		t.Errorf("temporary files survived the restart: %v", leftovers)
	}
}
