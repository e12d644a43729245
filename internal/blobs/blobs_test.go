package blobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/config"

	"github.com/prometheus/client_golang/prometheus"
)

// origin serves blobs by path and counts the requests; next reaches it
// through httputil.ReverseProxy, as sluice's forwarder does.
type origin struct {
	srv   *httptest.Server
	next  http.Handler
	hits  atomic.Int64
	mu    sync.Mutex
	files map[string][]byte
	// gate, if set, is waited on before the last half of a body is sent.
	gate chan struct{}
	// cut, if set, ends the body early with a broken connection.
	cut bool
	// claim, if set, is sent as Docker-Content-Digest, true or not.
	claim string
}

func newOrigin(t *testing.T) *origin {
	o := &origin{files: map[string][]byte{}}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.hits.Add(1)
		o.mu.Lock()
		body, ok := o.files[r.URL.Path]
		gate, cut, claim := o.gate, o.cut, o.claim
		o.mu.Unlock()
		if claim != "" {
			w.Header().Set("Docker-Content-Digest", claim)
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		half := len(body) / 2
		w.Write(body[:half])
		if gate != nil {
			w.(http.Flusher).Flush()
			<-gate
		}
		if cut {
			panic(http.ErrAbortHandler) // the connection breaks midway
		}
		w.Write(body[half:])
	}))
	t.Cleanup(o.srv.Close)
	u, _ := url.Parse(o.srv.URL)
	o.next = &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport: &http.Transport{DisableCompression: true},
		ErrorLog:  slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug),
	}
	return o
}

func (o *origin) put(path string, body []byte) { o.mu.Lock(); o.files[path] = body; o.mu.Unlock() }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(b)
	return b
}

func digestOf(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func openStore(t *testing.T, dir string, maxBytes int64) *Store {
	t.Helper()
	s, err := Open(dir, Options{MaxBytes: maxBytes, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func matcher(t *testing.T) *Matcher {
	patterns, err := CompilePatterns(config.DefaultBlobPatterns)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMatcher(patterns, nil, false)
	return m
}

// hashWriter is a client that keeps only the hash and length of what it got.
type hashWriter struct {
	header  http.Header
	status  int
	h       hash.Hash
	n       int64
	aborted bool
}

func newHashWriter() *hashWriter { return &hashWriter{header: http.Header{}, h: sha256.New()} }

func (w *hashWriter) Header() http.Header { return w.header }
func (w *hashWriter) WriteHeader(c int) {
	if w.status == 0 {
		w.status = c
	}
}
func (w *hashWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	w.h.Write(p)
	w.n += int64(len(p))
	return len(p), nil
}
func (w *hashWriter) Flush()         {}
func (w *hashWriter) digest() string { return hex.EncodeToString(w.h.Sum(nil)) }

// get runs one request through the store; an aborted response (the
// handler's http.ErrAbortHandler) is reported, not propagated.
func get(s *Store, m *Matcher, next http.Handler, ctx context.Context, method, path string, hdr ...string) (w *hashWriter) {
	w = newHashWriter()
	// As inside a real server: httputil.ReverseProxy aborts a response whose
	// upstream body breaks only when the request has a server in its context.
	ctx = context.WithValue(ctx, http.ServerContextKey, &http.Server{})
	r := httptest.NewRequest(method, "https://registry.test"+path, nil).WithContext(ctx)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			w.aborted = true
		}
	}()
	s.Handle(w, r, "registry.test:443", m, next)
	return w
}

func blobPath(body []byte) string { return "/v2/library/alpine/blobs/sha256:" + digestOf(body) }

// TestConcurrentReadersOneDownload: 20 clients ask at once for a 200 MB
// blob: one upstream download, and every client gets identical bytes.
func TestConcurrentReadersOneDownload(t *testing.T) {
	body := randomBytes(200 << 20)
	o := newOrigin(t)
	path := blobPath(body)
	o.put(path, body)
	gate := make(chan struct{})
	o.gate = gate
	s := openStore(t, t.TempDir(), 1<<30)
	m := matcher(t)
	var wg sync.WaitGroup
	results := make([]*hashWriter, 20)
	for i := range results {
		wg.Go(func() { results[i] = get(s, m, o.next, context.Background(), "GET", path) })
	}
	for o.hits.Load() == 0 {
		runtimeGosched()
	}
	close(gate)
	wg.Wait()
	if n := o.hits.Load(); n != 1 {
		t.Errorf("20 concurrent readers made %d upstream requests, want 1", n)
	}
	want := digestOf(body)
	for i, w := range results {
		if w.aborted || w.status != 200 || w.n != int64(len(body)) || w.digest() != want {
			t.Fatalf("reader %d: status %d, %d bytes, digest %s, aborted %v", i, w.status, w.n, w.digest(), w.aborted)
		}
	}
	w := get(s, m, o.next, context.Background(), "GET", path)
	if w.header.Get("X-Cache") != "HIT" || w.digest() != want || o.hits.Load() != 1 {
		t.Errorf("later request: X-Cache %q, upstream hits %d; want a HIT from disk", w.header.Get("X-Cache"), o.hits.Load())
	}
}

func TestDigestMismatchStoresNothing(t *testing.T) {
	good, bad := randomBytes(1<<20), randomBytes(1<<20)
	bad[0] ^= 1
	o := newOrigin(t)
	path := blobPath(good)
	o.put(path, bad) // the registry (or someone in between) sends other bytes
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	w := get(s, matcher(t), o.next, context.Background(), "GET", path)
	// Streaming, the client's response is aborted before its last byte; a
	// client that came as the download ended gets a 502 (this was the
	// flake: it used to fetch the same bad bytes again and get them whole).
	if w.status == http.StatusOK && !w.aborted || w.n >= int64(len(bad)) {
		t.Errorf("client got status %d, %d of %d bytes, aborted=%v: want the download aborted or refused, never complete", w.status, w.n, len(bad), w.aborted)
	}
	if size, files := s.Size(); size != 0 || files != 0 {
		t.Errorf("store holds %d bytes in %d files after a digest mismatch", size, files)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

func TestBrokenDownloadDiscarded(t *testing.T) {
	body := randomBytes(1 << 20)
	o := newOrigin(t)
	path := "/pool/main/h/hello/hello_2.10-3_amd64.deb"
	o.put(path, body)
	o.cut = true
	s := openStore(t, t.TempDir(), 1<<30)
	m := matcher(t)
	// Streaming, the client's response is aborted; a client that came as
	// the download failed gets a 502. Never the partial body as complete.
	if w := get(s, m, o.next, context.Background(), "GET", path); w.status == http.StatusOK && !w.aborted || w.n >= int64(len(body)) {
		t.Errorf("an upstream cut midway reached the client as status %d, %d of %d bytes, aborted=%v", w.status, w.n, len(body), w.aborted)
	}
	if _, files := s.Size(); files != 0 {
		t.Error("a partial download was stored")
	}
	o.cut = false
	if w := get(s, m, o.next, context.Background(), "GET", path); w.digest() != digestOf(body) || w.header.Get("X-Cache") != "MISS" {
		t.Errorf("retry: X-Cache %q digest ok %v", w.header.Get("X-Cache"), w.digest() == digestOf(body))
	}
}

func TestServeFromDiskRangeHEADRestart(t *testing.T) {
	body := randomBytes(100_000)
	o := newOrigin(t)
	path := "/releases/v1.2.3/tool-linux-amd64.tar.gz"
	o.put(path, body)
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	m := matcher(t)
	get(s, m, o.next, context.Background(), "GET", path)

	s = openStore(t, dir, 1<<30) // a restart
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "https://registry.test"+path, nil)
	r.Header.Set("Range", "bytes=10-19")
	s.Handle(rec, r, "registry.test:443", m, o.next)
	if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), body[10:20]) || rec.Header().Get("X-Cache") != "HIT" {
		t.Errorf("Range after restart: %d, %d bytes, X-Cache %q", rec.Code, rec.Body.Len(), rec.Header().Get("X-Cache"))
	}
	rec = httptest.NewRecorder()
	s.Handle(rec, httptest.NewRequest("HEAD", "https://registry.test"+path, nil), "registry.test:443", m, o.next)
	if rec.Code != 200 || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Errorf("HEAD: %d body %d Content-Length %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Length"))
	}
	etag := rec.Header().Get("Etag")
	rec = httptest.NewRecorder()
	r = httptest.NewRequest("GET", "https://registry.test"+path, nil)
	r.Header.Set("If-None-Match", etag)
	s.Handle(rec, r, "registry.test:443", m, o.next)
	if rec.Code != http.StatusNotModified {
		t.Errorf("If-None-Match %s: %d, want 304", etag, rec.Code)
	}
	if o.hits.Load() != 1 {
		t.Errorf("upstream hits %d, want 1", o.hits.Load())
	}
}

func TestCorruptFileRefetched(t *testing.T) {
	body := randomBytes(50_000)
	o := newOrigin(t)
	path := blobPath(body)
	o.put(path, body)
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	m := matcher(t)
	get(s, m, o.next, context.Background(), "GET", path)
	corruptOnDisk(t, dir, body)
	s = openStore(t, dir, 1<<30)
	w := get(s, m, o.next, context.Background(), "GET", path)
	if w.digest() != digestOf(body) || o.hits.Load() != 2 {
		t.Errorf("after corruption on disk: digest ok %v, upstream hits %d; want it detected and fetched again", w.digest() == digestOf(body), o.hits.Load())
	}
}

func TestCrashLeftoversRemoved(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir, 1<<30)
	half := filepath.Join(dir, "tmp", "blob-123")
	os.WriteFile(half, []byte("half a layer"), 0o600)
	openStore(t, dir, 1<<30)
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("a temporary file from a crashed download survived a restart: %v", err)
	}
}

func TestEviction(t *testing.T) {
	o := newOrigin(t)
	s := openStore(t, t.TempDir(), 250_000)
	m := matcher(t)
	for i := range 5 {
		p := fmt.Sprintf("/pool/pkg%d.deb", i)
		o.put(p, randomBytes(100_000+i))
		get(s, m, o.next, context.Background(), "GET", p)
	}
	if size, files := s.Size(); size > 250_000 || files != 2 {
		t.Errorf("store holds %d bytes in %d files, cap 250000", size, files)
	}
	if w := get(s, m, o.next, context.Background(), "GET", "/pool/pkg4.deb"); w.header.Get("X-Cache") != "HIT" {
		t.Error("the most recent file was evicted")
	}
}

func TestCredentialsBypassUnlessDigest(t *testing.T) {
	body := randomBytes(1000)
	o := newOrigin(t)
	o.put("/private/pkg.deb", body)
	o.put(blobPath(body), body)
	s := openStore(t, t.TempDir(), 1<<30)
	m := matcher(t)
	for range 2 {
		if w := get(s, m, o.next, context.Background(), "GET", "/private/pkg.deb", "Authorization", "Bearer x"); w.header.Get("X-Cache") != "BYPASS" {
			t.Errorf("a non-digest file fetched with credentials: X-Cache %q, want BYPASS", w.header.Get("X-Cache"))
		}
	}
	get(s, m, o.next, context.Background(), "GET", blobPath(body), "Authorization", "Bearer alice")
	if w := get(s, m, o.next, context.Background(), "GET", blobPath(body), "Authorization", "Bearer bob"); w.header.Get("X-Cache") != "HIT" {
		t.Errorf("a digest-named blob fetched with other credentials: X-Cache %q, want HIT (the digest proves the content)", w.header.Get("X-Cache"))
	}
}

// TestSecretsNeverKeyed: credentials in a blob URL's query never reach the
// index or its listing; a signed URL of a file that is not content-
// addressed is not stored at all.
func TestSecretsNeverKeyed(t *testing.T) {
	body := randomBytes(1000)
	o := newOrigin(t)
	o.put(blobPath(body), body)
	o.put("/pool/p.deb", body)
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	m := matcher(t)
	signed := "?X-Amz-Algorithm=AWS4&X-Amz-Credential=SECRET1&X-Amz-Signature=SECRET2&token=SECRET3&part=1"
	get(s, m, o.next, context.Background(), "GET", blobPath(body)+signed)
	if w := get(s, m, o.next, context.Background(), "GET", "/pool/p.deb"+signed); w.header.Get("X-Cache") != "BYPASS" {
		t.Errorf("a signed URL of a non-digest file: X-Cache %q, want BYPASS", w.header.Get("X-Cache"))
	}
	list := s.List()
	if len(list) != 1 || !strings.Contains(list[0].Key, "part=1") || !strings.Contains(list[0].Key, "X-Amz-Algorithm") {
		t.Fatalf("index %+v, want the one blob keyed by its path and its harmless parameters", list)
	}
	index, _ := os.ReadFile(filepath.Join(dir, "index.json"))
	for _, secret := range []string{"SECRET1", "SECRET2", "SECRET3"} {
		if strings.Contains(list[0].Key, secret) || strings.Contains(string(index), secret) {
			t.Errorf("%s reached the blob index: %s", secret, index)
		}
	}
}

func TestLeavingClientDoesNotAbortOthers(t *testing.T) {
	body := randomBytes(4 << 20)
	o := newOrigin(t)
	path := blobPath(body)
	o.put(path, body)
	gate := make(chan struct{})
	o.gate = gate
	s := openStore(t, t.TempDir(), 1<<30)
	m := matcher(t)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan *hashWriter)
	go func() { first <- get(s, m, o.next, ctx, "GET", path) }()
	for o.hits.Load() == 0 {
		runtimeGosched()
	}
	second := make(chan *hashWriter)
	go func() { second <- get(s, m, o.next, context.Background(), "GET", path) }()
	cancel()
	<-first
	close(gate)
	if w := <-second; w.digest() != digestOf(body) {
		t.Errorf("the other client got %d bytes (aborted %v) after the first left", w.n, w.aborted)
	}
}

func runtimeGosched() { time.Sleep(time.Millisecond) }

// FuzzIndexLoad: whatever index.json holds, opening the store neither
// panics nor removes a file outside it, and keeps only well-formed entries.
func FuzzIndexLoad(f *testing.F) {
	good := `[{"key":"registry.test:443/v2/x/blobs/sha256:` + strings.Repeat("a", 64) + `","digest":"` + strings.Repeat("a", 64) + `","size":3,"used":"2026-12-01T12:00:00Z"}]`
	for _, s := range []string{good, `[{"key":"k","digest":"","size":1}]`, `[{"key":"k","digest":"../../victim","size":1}]`,
		`[null]`, `[{"digest":"` + strings.Repeat("b", 64) + `","size":-1}]`, `{}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, index []byte) {
		root := t.TempDir()
		victim := filepath.Join(root, "victim")
		os.WriteFile(victim, []byte("keep"), 0o600)
		dir := filepath.Join(root, "store", "blobs")
		os.MkdirAll(filepath.Join(dir, "sha256", "aa"), 0o700)
		os.WriteFile(filepath.Join(dir, "sha256", "aa", strings.Repeat("a", 64)), []byte("abc"), 0o600)
		os.WriteFile(filepath.Join(dir, "index.json"), index, 0o600)
		s, err := Open(dir, Options{MaxBytes: 1 << 20, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			return
		}
		for _, e := range s.List() {
			if !validDigest(e.Digest) || e.Size < 0 {
				t.Fatalf("index entry %+v kept", e)
			}
		}
		s.Remove("")
		s.GC()
		if _, err := os.Stat(victim); err != nil {
			t.Fatalf("a file outside the store went: %v", err)
		}
	})
}

// corruptOnDisk rewrites the stored file of body with one byte changed, at
// the same size and with a later modification time (whatever the file
// system's resolution).
func corruptOnDisk(t *testing.T, dir string, body []byte) {
	t.Helper()
	file := filepath.Join(dir, "sha256", digestOf(body)[:2], digestOf(body))
	corrupt := bytes.Clone(body)
	corrupt[100] ^= 0xff
	if err := os.WriteFile(file, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
}

// TestFileChangedWhileRunning: a stored file rewritten on disk while sluice
// runs, at the same size, is hashed again before it is served, never served
// as it is.
func TestFileChangedWhileRunning(t *testing.T) {
	body := randomBytes(50_000)
	o := newOrigin(t)
	path := blobPath(body)
	o.put(path, body)
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	m := matcher(t)
	get(s, m, o.next, context.Background(), "GET", path)
	if w := get(s, m, o.next, context.Background(), "GET", path); w.header.Get("X-Cache") != "HIT" {
		t.Fatalf("second GET: X-Cache %q, want HIT", w.header.Get("X-Cache"))
	}
	corruptOnDisk(t, dir, body)
	w := get(s, m, o.next, context.Background(), "GET", path)
	if w.digest() != digestOf(body) || o.hits.Load() != 2 {
		t.Errorf("after the file changed: digest ok %v, upstream hits %d; want it detected and fetched again", w.digest() == digestOf(body), o.hits.Load())
	}
}

// TestScrubFindsWhatTheTimeHides: a file changed on disk with its
// modification time put back passes the check on open; the scrub hashes
// every file and drops it, so it is fetched again, and leaves the good one.
func TestScrubFindsWhatTheTimeHides(t *testing.T) {
	good, rotten := randomBytes(40_000), randomBytes(50_000)
	o := newOrigin(t)
	o.put(blobPath(good), good)
	o.put(blobPath(rotten), rotten)
	dir := t.TempDir()
	s := openStore(t, dir, 1<<30)
	m := matcher(t)
	for _, b := range [][]byte{good, rotten} {
		get(s, m, o.next, context.Background(), "GET", blobPath(b))
		get(s, m, o.next, context.Background(), "GET", blobPath(b)) // verified once
	}
	file := filepath.Join(dir, "sha256", digestOf(rotten)[:2], digestOf(rotten))
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	corruptOnDisk(t, dir, rotten)
	if err := os.Chtimes(file, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if checked, dropped := s.Scrub(nil); checked != 2 || dropped != 1 {
		t.Errorf("scrub: %d files hashed, %d dropped; want 2 and 1", checked, dropped)
	}
	hits := o.hits.Load()
	if w := get(s, m, o.next, context.Background(), "GET", blobPath(rotten)); w.digest() != digestOf(rotten) || o.hits.Load() != hits+1 {
		t.Errorf("the rotten file after the scrub: digest ok %v, upstream hits +%d; want it fetched again", w.digest() == digestOf(rotten), o.hits.Load()-hits)
	}
	if w := get(s, m, o.next, context.Background(), "GET", blobPath(good)); w.header.Get("X-Cache") != "HIT" {
		t.Errorf("the good file after the scrub: X-Cache %q, want HIT", w.header.Get("X-Cache"))
	}
}

// TestDigestClaimsAreTrue: Docker-Content-Digest names the digest of the
// bytes sent, never an upstream's claim that nothing verifies.
func TestDigestClaimsAreTrue(t *testing.T) {
	deb, layer := randomBytes(30_000), randomBytes(31_000)
	o := newOrigin(t)
	debPath := "/pool/main/h/hello/hello_2.10-3_amd64.deb"
	o.put(debPath, deb)
	o.put(blobPath(layer), layer)
	o.claim = "sha256:" + digestOf([]byte("something else"))
	s := openStore(t, t.TempDir(), 1<<30)
	m := matcher(t)
	for _, tt := range []struct{ name, path, digest string }{{"package", debPath, digestOf(deb)}, {"layer", blobPath(layer), digestOf(layer)}} {
		for _, want := range []string{"MISS", "HIT"} {
			w := get(s, m, o.next, context.Background(), "GET", tt.path)
			claim := w.header.Get("Docker-Content-Digest")
			if w.header.Get("X-Cache") != want || claim != "" && claim != "sha256:"+tt.digest {
				t.Errorf("%s, X-Cache %s (want %s): Docker-Content-Digest %q; want none or sha256:%s", tt.name, w.header.Get("X-Cache"), want, claim, tt.digest)
			}
		}
	}
}

// TestDownloadProgress: a download in progress shows what arrived, of
// what length, at what rate and for how many readers, in Downloads and
// the metrics; it is gone once stored.
func TestDownloadProgress(t *testing.T) {
	body := randomBytes(4 << 20)
	o := newOrigin(t)
	path := blobPath(body)
	o.put(path, body)
	gate := make(chan struct{})
	o.gate = gate
	reg := prometheus.NewRegistry()
	s, err := Open(t.TempDir(), Options{MaxBytes: 1 << 30, Log: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	m := matcher(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { get(s, m, o.next, context.Background(), "GET", path) })
	}
	var p []Progress
	for range 1000 { // the first half arrives, then the origin holds the rest
		if p = s.Downloads(); len(p) == 1 && p[0].Bytes == int64(len(body)/2) && p[0].Readers == 2 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(p) != 1 || p[0].Bytes != int64(len(body)/2) || p[0].Length != int64(len(body)) || p[0].Readers != 2 || p[0].Rate <= 0 || !strings.Contains(p[0].Key, "sha256:") {
		t.Fatalf("downloads in progress %+v; want one at half of %d bytes, 2 readers, a rate", p, len(body))
	}
	if got := gathered(t, reg, "sluice_blobs_download_bytes"); got != float64(len(body)/2) {
		t.Errorf("sluice_blobs_download_bytes %v, want %d", got, len(body)/2)
	}
	close(gate)
	wg.Wait()
	if p := s.Downloads(); len(p) != 0 {
		t.Errorf("downloads in progress after it was stored: %+v", p)
	}
}

// gathered reads a registered gauge's value.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s registered", name)
	return 0
}
