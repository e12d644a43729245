package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"sluice/internal/ca"
	"sluice/internal/testenv"
	"sluice/internal/testpki"
	"sluice/internal/testredis"

	"go.yaml.in/yaml/v3"
)

// running is one `sluice run` inside the test process.
type running struct {
	t      testing.TB
	cfg    string
	dir    string
	stderr *testenv.Buffer
	cancel context.CancelFunc
	done   chan error
	addrs  map[string]string // listener -> address
	// logFile, when set, is where the config sends the log (log.file).
	logFile string
}

// log is what sluice has logged so far.
func (r *running) log() string {
	if r.logFile != "" {
		return readFileIfAny(r.logFile)
	}
	return r.stderr.String()
}

// status is the dashboard's GET /status, without its history.
func (r *running) status(t testing.TB) string { return r.admin(t, "/status?history=0") }

// metrics is the admin listener's scrape.
func (r *running) metrics(t testing.TB) string { return r.admin(t, "/metrics") }

// admin is the body of a GET of path on the admin listener.
func (r *running) admin(t testing.TB, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + r.addrs["admin"] + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startRun writes cfg (with %s for the data dir) and runs `sluice run -c`.
func startRun(t testing.TB, cfgYAML string) *running {
	t.Helper()
	return startRunLogging(t, cfgYAML, "")
}

// startRunLogFile is startRun for a config whose log.file is logs/sluice.log.
func startRunLogFile(t testing.TB, cfgYAML string) *running {
	t.Helper()
	return startRunLogging(t, cfgYAML, filepath.Join("logs", "sluice.log"))
}

func startRunLogging(t testing.TB, cfgYAML, logFile string) *running {
	t.Helper()
	return startRunIn(t, t.TempDir(), cfgYAML, logFile)
}

// startRunIn is startRun in dir, which may hold what an earlier run left.
func startRunIn(t testing.TB, dir, cfgYAML, logFile string) *running {
	t.Helper()
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfgYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &running{t: t, cfg: path, dir: dir, stderr: &testenv.Buffer{}, done: make(chan error, 1), addrs: map[string]string{}}
	if logFile != "" {
		r.logFile = filepath.Join(dir, logFile)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		r.done <- Run(ctx, []string{"run", "-c", path}, io.Discard, io.MultiWriter(r.stderr, t.Output()))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("sluice run did not stop within 30s of its context ending")
		}
	})
	r.waitLog("sluice started")
	for _, l := range strings.Split(r.log(), "\n") {
		var m map[string]string
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "listening" {
			r.addrs[m["listener"]] = m["addr"]
		}
	}
	return r
}

// waitLog waits until a log line contains s (sluice logs each step it takes).
func (r *running) waitLog(s string) {
	r.t.Helper()
	for range 1000 {
		if strings.Contains(r.log(), s) {
			return
		}
		select {
		case err := <-r.done:
			r.t.Fatalf("sluice run exited (%v) before logging %q:\n%s%s", err, s, r.stderr, r.log())
		case <-time.After(10 * time.Millisecond):
		}
	}
	r.t.Fatalf("no log line with %q after 10s:\n%s", s, r.log())
}

// cliConfig writes r's config with its admin listener's real address (the
// file says port 0), for the commands that ask the running sluice.
func (r *running) cliConfig() string {
	r.t.Helper()
	cli := filepath.Join(r.dir, "cli.yaml")
	if err := os.WriteFile(cli, []byte(strings.Replace(readFile(r.t, r.cfg), "admin: 127.0.0.1:0", "admin: "+r.addrs["admin"], 1)), 0o644); err != nil {
		r.t.Fatal(err)
	}
	return cli
}

func (r *running) client() *http.Client {
	pem, err := os.ReadFile(filepath.Join(r.dir, "data", "ca.pem"))
	if err != nil {
		r.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", Host: r.addrs["proxy"]}),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}
	r.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// upstream starts a TLS upstream for the given names and returns the
// config lines of a hosts entry for each name.
func upstream(t *testing.T, h http.Handler, names ...string) string {
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, h, names...)
	caPath := upCA.WritePEM(t, t.TempDir())
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "  %s: {upstream_ca: %s, connect_to: %s, allow_private: true}\n", n, caPath, srv.Listener.Addr())
	}
	return b.String()
}

func baseConfig(hosts string) string {
	return "listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\ndata_dir: data\ntimeouts: {shutdown: 5s}\nhosts:\n" + hosts
}

func status(t testing.TB, c *http.Client, u string) int {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestRunEndToEnd(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong") }), "api.test")
	r := startRun(t, baseConfig(hosts))
	c := r.client()
	if got := status(t, c, "https://api.test/ping"); got != 200 {
		t.Errorf("allowed host: status %d, want 200", got)
	}
	// Go prints the status line of a refused CONNECT: it must say why.
	if _, err := c.Get("https://denied.test/"); err == nil || !strings.Contains(err.Error(), `sluice: host not listed; add "denied.test" to hosts`) {
		t.Errorf("denied host: err %v, want the CONNECT refused with the reason and the fix", err)
	}

	admin := "http://" + r.addrs["admin"]
	plain := &http.Client{Timeout: 5 * time.Second}
	resp, err := plain.Get(admin + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	// A refused CONNECT's answer goes out before its access line and
	// metrics are written (as any answer does): poll for them.
	var metrics []byte
	for range 100 {
		resp, _ = plain.Get(admin + "/metrics")
		metrics, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(metrics, []byte(`sluice_proxy_requests_total{code="4xx",decision="deny",mode="connect"} 1`)) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{`sluice_proxy_requests_total{code="2xx",decision="intercept",mode="intercept"} 1`,
		`sluice_proxy_requests_total{code="4xx",decision="deny",mode="connect"} 1`, "sluice_ca_leaves_minted_total 1"} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, _ = plain.Get(admin + "/ca.pem")
	caPEM, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	onDisk, _ := os.ReadFile(filepath.Join(r.dir, "data", "ca.pem"))
	if !bytes.Equal(caPEM, onDisk) {
		t.Error("/ca.pem differs from the CA in the data dir")
	}
}

func TestReloadOnSIGHUP(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), "a.test", "b.test")
	lines := strings.SplitAfter(hosts, "\n")
	r := startRun(t, baseConfig(lines[0]))
	c := r.client()
	if got := status(t, c, "https://a.test/"); got != 200 {
		t.Fatalf("a.test: status %d, want 200", got)
	}
	if _, err := c.Get("https://b.test/"); err == nil {
		t.Fatal("b.test allowed before it was added")
	}

	os.WriteFile(r.cfg, []byte(baseConfig(hosts)), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	r.waitLog("config reloaded")
	if got := status(t, c, "https://b.test/"); got != 200 {
		t.Errorf("b.test after reload: status %d, want 200", got)
	}

	os.WriteFile(r.cfg, []byte(baseConfig(hosts)+"  c.test: {mode: intercpet}\n"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	r.waitLog("config reload refused")
	if !strings.Contains(r.stderr.String(), `sluice.yaml:7: hosts.\"c.test\".mode: mode \"intercpet\"`) {
		t.Errorf("refused reload does not log the error with its line:\n%s", r.stderr)
	}
	c.CloseIdleConnections()
	if got := status(t, c, "https://b.test/"); got != 200 {
		t.Errorf("b.test after a refused reload: status %d, want 200 (the running config stays)", got)
	}
}

func TestGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "finished")
	}), "slow.test")
	r := startRun(t, baseConfig(hosts))
	c := r.client()
	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := c.Get("https://slow.test/")
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{string(b), err}
	}()
	<-started
	r.cancel() // SIGTERM, as main turns it into a cancelled context
	r.waitLog("shutting down")
	// While a request is in flight, the admin listener still answers, and
	// /healthz says sluice is draining.
	var code int
	var health string
	for range 100 {
		resp, err := http.Get("http://" + r.addrs["admin"] + "/healthz")
		if err != nil {
			t.Fatalf("GET /healthz during shutdown: %v, want an answer", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if code, health = resp.StatusCode, string(b); code == http.StatusServiceUnavailable {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(health, `"status":"draining"`) {
		t.Errorf("GET /healthz during shutdown: %d %s, want 503 draining", code, health)
	}
	close(release)
	if res := <-got; res.err != nil || res.body != "finished" {
		t.Errorf("in-flight request during shutdown: %q, %v; want it to finish", res.body, res.err)
	}
	if err := <-r.done; err != nil {
		t.Errorf("Run after shutdown = %v, want nil (exit 0)", err)
	}
	r.done <- nil // for the cleanup
}

func TestRunRefusesReadableCAKey(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(baseConfig("  a.test: {}\n")), 0o644)
	if err := Run(context.Background(), []string{"ca", "export", "-c", cfg}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "data", "ca.key"), 0o640)
	err := Run(context.Background(), []string{"run", "-c", cfg}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("run with a group-readable CA key: %v, want a refusal", err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("hosts:\n  api.binance.com: {profile: binance}\n"), 0o644)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"check", "-c", good}, &out, io.Discard); err != nil {
		t.Fatalf("check good: %v", err)
	}
	if !strings.Contains(out.String(), "proxy: 127.0.0.1:3128") || !strings.Contains(out.String(), "mode: intercept") {
		t.Errorf("check does not print the effective config:\n%s", out.String())
	}
	if want := "#   api.binance.com: binance (set in its entry)\n"; !strings.Contains(out.String(), want) {
		t.Errorf("check does not say where the profile came from (%q):\n%s", want, out.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("hosts:\n  a.test: {mode: nope}\n  b.test: {ports: [0]}\nlisten: {proxy: nowhere}\n"), 0o644)
	err := Run(context.Background(), []string{"check", "-c", bad}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("check bad: no error")
	}
	for _, want := range []string{"bad.yaml:2:", "bad.yaml:3:", "bad.yaml:4:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("check bad: %v\nwant an error at %s", err, want)
		}
	}
	if err := Run(context.Background(), []string{"check"}, io.Discard, io.Discard); err != nil {
		t.Errorf("check of the embedded default: %v", err)
	}
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o644)
	if err := Run(context.Background(), []string{"check", "-c", empty}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("check of an empty file: %v, want an error naming it empty", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"check", "--help"}, {"ca", "export", "--help"}, {"env", "--help"}, {"version"}} {
		var out bytes.Buffer
		if err := Run(context.Background(), args, &out, io.Discard); err != nil || out.Len() == 0 {
			t.Errorf("sluice %v: err %v, output %q; want usage on stdout and success", args, err, out.String())
		}
	}
	if err := Run(context.Background(), []string{"frobnicate"}, io.Discard, io.Discard); err == nil {
		t.Error("unknown command accepted")
	}
}

func TestCAExport(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(baseConfig("  a.test: {}\n")), 0o644)
	var pem bytes.Buffer
	if err := Run(context.Background(), []string{"ca", "export", "-c", cfg}, &pem, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pem.String(), "-----BEGIN CERTIFICATE-----") || strings.Contains(pem.String(), "PRIVATE") {
		t.Errorf("ca export pem: %q", pem.String())
	}
	p12 := filepath.Join(dir, "ca.p12")
	if err := Run(context.Background(), []string{"ca", "export", "-c", cfg, "--format", "p12", "-o", p12}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p12); err != nil || fi.Size() == 0 {
		t.Errorf("ca export p12 wrote nothing: %v", err)
	}
	var der bytes.Buffer
	if err := Run(context.Background(), []string{"ca", "export", "-c", cfg, "--format", "der"}, &der, io.Discard); err != nil {
		t.Fatal(err)
	}
	if c, err := ca.ParseCertPEM(pem.Bytes()); err != nil || !bytes.Equal(der.Bytes(), c.Raw) {
		t.Errorf("ca export --format der: %d bytes, not the PEM's certificate (%v)", der.Len(), err)
	}
	if err := Run(context.Background(), []string{"ca", "export", "-c", cfg, "--format", "cer"}, io.Discard, io.Discard); err == nil {
		t.Error("ca export --format cer accepted")
	}
}

// envFrom runs `sluice env` and returns its exports as KEY=VALUE pairs.
func envFrom(t *testing.T, cfg string) []string {
	t.Helper()
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"env", "-c", cfg}, &out, io.Discard); err != nil {
		t.Fatalf("sluice env: %v", err)
	}
	var env []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		kv, ok := strings.CutPrefix(sc.Text(), "export ")
		if !ok {
			t.Fatalf("sluice env printed %q, want only export lines", sc.Text())
		}
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, k+"="+strings.Trim(v, "'"))
	}
	return env
}

// TestShutdownClosesTunnels: a tunnel carries no request boundary to wait
// for, so shutdown closes it and Run still returns promptly with nil.
func TestShutdownClosesTunnels(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	r := startRun(t, baseConfig(fmt.Sprintf("  git.test: {mode: tunnel, connect_to: %s, allow_private: true}\n", echo.Addr())))
	c, err := net.Dial("tcp", r.addrs["proxy"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "CONNECT git.test:443 HTTP/1.1\r\nHost: git.test:443\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	fmt.Fprint(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("through the tunnel: %q %v", line, err)
	}
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	r.done <- nil
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadString('\n'); err != io.EOF {
		t.Errorf("tunnel after shutdown: read err %v, want EOF (closed by sluice)", err)
	}
}

// TestReverseListener: requests to listen.reverse reach the backend, with
// X-Forwarded-For, and are cached as an RFC 9111 shared cache.
func TestReverseListener(t *testing.T) {
	var hits atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Cache-Control", "max-age=60")
		fmt.Fprintf(w, "host=%s xff=%s", r.Host, r.Header.Get("X-Forwarded-For"))
	}))
	defer backend.Close()
	r := startRun(t, fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: \"off\", reverse: {addr: 127.0.0.1:0, backend: %s}}\ndata_dir: data\nhosts: {}\n", backend.URL))
	base := "http://" + r.addrs["reverse"]
	for i, want := range []string{"MISS", "HIT"} {
		resp, err := http.Get(base + "/doc")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("X-Cache"); got != want || !strings.Contains(string(body), "xff=127.0.0.1") {
			t.Errorf("request %d: X-Cache %q body %q, want %s and X-Forwarded-For set", i, got, body, want)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("backend hits %d, want 1", hits.Load())
	}
}

// TestEnvFormats: sluice env writes the same variables for a shell, a
// compose env_file and a systemd unit, the CA variables of git, pip and
// the AWS SDKs among them.
func TestEnvFormats(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, []byte("data_dir: data\nhosts: {}\n"), 0o644)
	want := map[string]string{}
	for _, kv := range envFrom(t, cfg) {
		k, v, _ := strings.Cut(kv, "=")
		want[k] = v
	}
	for _, k := range []string{"HTTPS_PROXY", "SSL_CERT_FILE", "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE"} {
		if want[k] == "" {
			t.Errorf("sluice env does not set %s", k)
		}
	}
	for format, parse := range map[string]func(string) (string, string, bool){
		"dotenv": func(l string) (string, string, bool) { return strings.Cut(l, "=") },
		"systemd": func(l string) (string, string, bool) {
			q, ok := strings.CutPrefix(l, "Environment=")
			kv, err := strconv.Unquote(q)
			k, v, _ := strings.Cut(kv, "=")
			return k, v, ok && err == nil
		},
	} {
		var out bytes.Buffer
		if err := Run(context.Background(), []string{"env", "--format", format, "-c", cfg}, &out, io.Discard); err != nil {
			t.Fatalf("sluice env --format %s: %v", format, err)
		}
		got := map[string]string{}
		for line := range strings.Lines(strings.TrimSpace(out.String())) {
			k, v, ok := parse(strings.TrimSuffix(line, "\n"))
			if !ok {
				t.Errorf("--format %s: line %q", format, line)
			}
			got[k] = v
		}
		if !maps.Equal(got, want) {
			t.Errorf("--format %s: %v, want %v", format, got, want)
		}
	}
	var out bytes.Buffer
	var got map[string]string
	if err := Run(context.Background(), []string{"env", "--format", "json", "-c", cfg}, &out, io.Discard); err != nil || json.Unmarshal(out.Bytes(), &got) != nil || !maps.Equal(got, want) {
		t.Errorf("--format json: %v %s, want %v", err, out.String(), want)
	}
	if err := Run(context.Background(), []string{"env", "--format", "fish", "-c", cfg}, io.Discard, io.Discard); err == nil {
		t.Error("sluice env --format fish accepted")
	}
}

// TestVersionFallsBackToLinkValues: where the build has no module version
// or VCS stamp, sluice version reports what was set at link time, and
// always the Go version.
func TestVersionFallsBackToLinkValues(t *testing.T) {
	defer func(v, r string) { linkVersion, linkRevision = v, r }(linkVersion, linkRevision)
	linkVersion, linkRevision = "v9.8.7", "0123abcd"
	b := BuildInfo() // go test stamps no module version into its binary
	stamped := false
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			stamped = stamped || s.Key == "vcs.revision"
		}
	}
	if b.Version != "v9.8.7" || !stamped && b.Revision != "0123abcd" || b.GoVersion != runtime.Version() {
		t.Errorf("BuildInfo() = %+v, want the link-time version and revision and %s", b, runtime.Version())
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"version"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "v9.8.7") || !strings.Contains(out.String(), runtime.Version()) {
		t.Errorf("sluice version: %v %q", err, out.String())
	}
}

// docs are the project's documentation: README.md and every file under
// docs/, by path.
func docs(t *testing.T) map[string]string {
	t.Helper()
	root := filepath.Join("..", "..")
	paths, _ := filepath.Glob(filepath.Join(root, "docs", "*", "*.md"))
	more, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	out := map[string]string{}
	for _, p := range append(append(paths, more...), filepath.Join(root, "README.md")) {
		out[p] = readFile(t, p)
	}
	if len(out) < 10 {
		t.Fatalf("found %d documentation files under %s/docs: the test reads nothing", len(out), root)
	}
	return out
}

// TestSeriesFromTheStart: the documented series exist at the first scrape,
// before any request (zero counters), so that alerts on them work; a
// budget's series exist for every budget the config names, a rule set's
// for every check it makes, the requests' for each entry point's decisions,
// the DNS server's, the pins' and the fleet's once they are on.
func TestSeriesFromTheStart(t *testing.T) {
	redis := testredis.Start(t)
	t.Setenv("SLUICE_TEST_KEY", "real-key")
	t.Setenv("SLUICE_TEST_SECRET", "real-secret")
	cfg := baseConfig("  api.test: {throttle: {model: window, limit: 10, window: 1s, budget: test_budget, feedback: [ratelimit]}, rules: only_get}\n"+
		"  stream.binance.com: {profile: binance, ports: [9443, 443]}\n") +
		"keys:\n  k: {exchange: binance, key_env: SLUICE_TEST_KEY, secret_env: SLUICE_TEST_SECRET}\n" +
		"clients:\n  bot: {addresses: [127.0.0.1], hosts: [api.test], keys: {api.test: k}, limits: {orders_per_minute: 10}}\n" +
		"rule_sets:\n  only_get: {methods: [GET]}\ndns: {answer: [127.0.0.1]}\nfleet: {redis: \"" + redis.URL() + "\", cache: true}\n"
	r := startRun(t, strings.Replace(cfg, "admin: 127.0.0.1:0}", "admin: 127.0.0.1:0, dns: 127.0.0.1:0}", 1))
	scrape := r.metrics(t)
	have := map[string]bool{}
	for line := range strings.Lines(scrape) {
		if name, _, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			name, _, _ = strings.Cut(name, "{")
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				name = strings.TrimSuffix(name, suffix)
			}
			have[name] = true
		}
	}
	for path, text := range docs(t) {
		for _, name := range regexp.MustCompile("`(sluice_[a-z0-9_]+)").FindAllStringSubmatch(text, -1) {
			if !have[name[1]] {
				t.Errorf("%s is documented in %s but not in the first scrape", name[1], path)
			}
		}
	}
	// The Grafana dashboard names only series sluice exports.
	var board struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join("..", "..", "deploy", "grafana", "sluice.json"))), &board); err != nil || len(board.Panels) == 0 {
		t.Fatalf("deploy/grafana/sluice.json: %v, %d panels", err, len(board.Panels))
	}
	for _, p := range board.Panels {
		for _, target := range p.Targets {
			for _, name := range regexp.MustCompile(`sluice_[a-z0-9_]+`).FindAllString(target.Expr, -1) {
				if base := strings.TrimSuffix(name, "_bucket"); !have[base] {
					t.Errorf("Grafana panel %q names %s, which sluice does not export", p.Title, name)
				}
			}
		}
	}
	for _, series := range []string{
		`sluice_throttle_available{budget="test_budget"}`,
		`sluice_filter_violations_total{check="method",rule_set="only_get"} 0`,
		`sluice_proxy_requests_total{code="4xx",decision="deny",mode="connect"} 0`,
		`sluice_proxy_requests_total{code="2xx",decision="tunnel",mode="connect"} 0`,
	} {
		if !strings.Contains(scrape, series) {
			t.Errorf("no %s at the first scrape", series)
		}
	}
}

// TestShutdownCutOffIsLogged: a request still in flight when the shutdown
// grace is over is cut off, and its access line says so: sluice closed it,
// not its client.
func TestShutdownCutOffIsLogged(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{}, 1)
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), "stuck.test")
	r := startRun(t, strings.Replace(baseConfig(hosts), "shutdown: 5s", "shutdown: 1s", 1))
	c := r.client()
	go func() {
		if resp, err := c.Get("https://stuck.test/never"); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run after shutdown = %v, want nil", err)
	}
	r.done <- nil // for the cleanup
	var line string
	for l := range strings.Lines(r.stderr.String()) {
		if strings.Contains(l, `"path":"/never"`) {
			line = l
		}
	}
	if !strings.Contains(line, "cut off: sluice shut down") {
		t.Errorf("access line of the cut-off request: %q, want it to say sluice cut it off", line)
	}
}

// TestLogFileAndFail2ban: with log.file the log goes to that file, and the
// fail2ban filter docs/guides/rules.md gives finds the client of a rule violation
// in the lines sluice really writes there.
func TestLogFileAndFail2ban(t *testing.T) {
	regex := testenv.RequireTool(t, "fail2ban-regex", "fail2ban")
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.test")
	hosts = strings.Replace(hosts, "allow_private: true}", "allow_private: true, profile: binance}", 1)
	r := startRunLogFile(t, strings.Replace(baseConfig(hosts), "data_dir: data\n", "data_dir: data\nlog: {file: logs/sluice.log}\n", 1))
	c := r.client()
	for range 3 {
		if got := status(t, c, "https://api.test/sapi/v1/capital/withdraw/apply"); got != http.StatusForbidden {
			t.Fatalf("a withdrawal through the binance profile: %d, want 403", got)
		}
	}
	logFile := filepath.Join(r.dir, "logs", "sluice.log")
	var lines string
	for range 100 { // the log writer flushes within 100 ms
		if lines = readFileIfAny(logFile); strings.Count(lines, `"msg":"rule_violation"`) == 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(lines, `"msg":"sluice started"`) {
		t.Fatalf("%s does not hold sluice's log:\n%s", logFile, lines)
	}
	guide := readFile(t, filepath.Join("..", "..", "docs", "guides", "rules.md"))
	_, rest, _ := strings.Cut(guide, "filter.d/sluice.conf")
	_, rest, _ = strings.Cut(rest, "```ini\n")
	filter, _, _ := strings.Cut(rest, "```")
	filterFile := filepath.Join(t.TempDir(), "sluice.conf")
	os.WriteFile(filterFile, []byte(filter), 0o644)
	out, err := exec.Command(regex, logFile, filterFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Lines: ") || !regexp.MustCompile(`(?m)^Lines: \d+ lines, \d+ ignored, 3 matched`).Match(out) {
		t.Errorf("fail2ban-regex %s with the rules guide's filter: %v\n%s", logFile, err, out)
	}
	if !strings.Contains(string(out), "127.0.0.1") {
		t.Errorf("fail2ban-regex found no client 127.0.0.1:\n%s", out)
	}
}

func readFileIfAny(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestCheckExpand: sluice check --expand prints what a host entry ends up
// with: a plain hosts_file entry for api.binance.com gets the binance
// profile's cache rules, budgets and withdrawal guard.
func TestCheckExpand(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "api-list"), []byte("api.binance.com\napi.example.org\n"), 0o644)
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, []byte("hosts_file: api-list\ndata_dir: data\nhosts: {}\n"), 0o644)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"check", "-c", cfg, "--expand"}, &out, io.Discard); err != nil {
		t.Fatalf("sluice check --expand: %v", err)
	}
	var got struct {
		Hosts map[string]struct {
			Profile    string `yaml:"profile"`
			Cache      string `yaml:"cache"`
			CacheRules []any  `yaml:"cache_rules"`
			Throttle   []struct {
				Budget string `yaml:"budget"`
			} `yaml:"throttle"`
			Rules   string `yaml:"rules"`
			RuleSet struct {
				DenyPaths []struct {
					Prefix string `yaml:"prefix"`
				} `yaml:"deny_paths"`
			} `yaml:"rule_set"`
		} `yaml:"hosts"`
	}
	if err := yaml.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("--expand output is not YAML: %v\n%s", err, out.String())
	}
	b := got.Hosts["api.binance.com"]
	if b.Profile != "binance" || b.Cache != "rules" || len(b.CacheRules) == 0 || len(b.Throttle) == 0 || b.Rules != "binance" ||
		len(b.RuleSet.DenyPaths) == 0 || !strings.Contains(b.RuleSet.DenyPaths[0].Prefix, "withdraw") {
		t.Errorf("api.binance.com expanded: %+v\nwant the binance profile's cache rules, budgets and withdrawal guard", b)
	}
	if e := got.Hosts["api.example.org"]; e.Profile != "" || e.Cache != "off" || len(e.Throttle) != 0 {
		t.Errorf("api.example.org expanded: %+v, want no profile, no cache, no budget", e)
	}
}

// TestCAForUserWithoutDataDir: a user who cannot read sluice's data dir
// (the shipped systemd unit keeps it 0700 for sluice's own user) still gets
// `sluice env` and `sluice ca export`: the CA comes from the running
// sluice's admin listener, and env's bundle goes to the user's cache dir.
// The commands run in a child process as nobody (uid 65534).
func TestCAForUserWithoutDataDir(t *testing.T) {
	testenv.RequireRoot(t, "running a command as another user")
	r := startRun(t, baseConfig("  a.test: {}\n"))
	if err := os.Chmod(filepath.Join(r.dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(r.dir, "data", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// What nobody may read and run: the test binary, the config, a home.
	pub, err := os.MkdirTemp("", "sluice-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pub) })
	os.Chmod(pub, 0o755)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(pub, "app.test")
	os.WriteFile(bin, self, 0o755)
	cfg := filepath.Join(pub, "sluice.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: %s}\ndata_dir: %s\nhosts: {a.test: {}}\n", r.addrs["admin"], filepath.Join(r.dir, "data"))), 0o644)
	home := filepath.Join(pub, "home")
	os.Mkdir(home, 0o755)
	os.Chown(home, 65534, 65534)
	asNobody := func(args string) string {
		t.Helper()
		cmd := exec.Command(bin)
		cmd.Env = []string{"SLUICE_APP_CHILD=" + args, "HOME=" + home, "PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sluice %s as nobody: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := asNobody("ca export -c " + cfg); out != string(root) {
		t.Errorf("sluice ca export as nobody printed %q, want the running sluice's CA", out)
	}
	out := asNobody("env -c " + cfg)
	bundle := filepath.Join(home, ".cache", "sluice", "ca-bundle.pem")
	if !strings.Contains(out, "SSL_CERT_FILE='"+bundle+"'") {
		t.Errorf("sluice env as nobody printed:\n%s\nwant SSL_CERT_FILE at %s", out, bundle)
	}
	if data, err := os.ReadFile(bundle); err != nil || !bytes.HasSuffix(data, root) {
		t.Errorf("the bundle sluice env wrote for nobody (%v) does not end with the CA", err)
	}
}

// TestDataDirErrorsNameTheSetting: a data dir that cannot be written, or
// the default one under a HOME that does not exist, stops sluice with the
// setting to change.
func TestDataDirErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("listen: {proxy: 127.0.0.1:0, admin: \"off\"}\nhosts: {a.test: {}}\n"), 0o644)
	t.Setenv("XDG_DATA_HOME", "")
	t.Setenv("HOME", filepath.Join(dir, "no-such-home"))
	err := Run(context.Background(), []string{"run", "-c", cfg}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "which does not exist: set data_dir") {
		t.Errorf("sluice run with HOME missing: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "no-such-home")); serr == nil {
		t.Error("sluice created the missing HOME")
	}
	// A data dir under a file cannot be created, whoever runs the test (root too).
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	os.WriteFile(cfg, []byte("listen: {proxy: 127.0.0.1:0, admin: \"off\"}\ndata_dir: file/state\nhosts: {a.test: {}}\n"), 0o644)
	err = Run(context.Background(), []string{"run", "-c", cfg}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "data_dir "+filepath.Join(dir, "file", "state")+" cannot be created") || !strings.Contains(err.Error(), "set data_dir") {
		t.Errorf("sluice run with a data dir that cannot be created: %v", err)
	}
}
