package obs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"sluice/internal/decision"
)

func TestSecretName(t *testing.T) {
	for name, want := range map[string]bool{
		"Authorization": true, "X-MBX-APIKEY": true, "signature": true, "apiKey": true, "access_token": true,
		"OK-ACCESS-PASSPHRASE": true, "Cookie": true, "symbol": false, "interval": false, "Accept-Encoding": false, "limit": false,
	} {
		if got := SecretName(name); got != want {
			t.Errorf("SecretName(%q) = %v, want %v", name, got, want)
		}
	}
	q, _ := url.ParseQuery("symbol=BTCUSDT&timestamp=1&signature=abc&apiKey=k")
	if got := RedactQuery(q); strings.Contains(got, "abc") || strings.Contains(got, "=k") || !strings.Contains(got, "symbol=BTCUSDT") {
		t.Errorf("RedactQuery = %q", got)
	}
}

// FuzzSecretName holds SecretName to its definition: some secret word,
// in any ASCII case, anywhere in the name.
func FuzzSecretName(f *testing.F) {
	for _, s := range []string{"Authorization", "X-MBX-APIKEY", "symbol", "sessio", "kEy", "pasS", "Accept-Encoding", "ses\xffsion", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		// ASCII only, as the words are: strings.ToLower would also
		// turn the Kelvin sign into a k.
		lower := strings.Map(func(r rune) rune {
			if 'A' <= r && r <= 'Z' {
				return r + 'a' - 'A'
			}
			return r
		}, name)
		want := false
		for _, w := range secretWords {
			want = want || strings.Contains(lower, w)
		}
		if got := SecretName(name); got != want {
			t.Errorf("SecretName(%q) = %v, want %v", name, got, want)
		}
	})
}

// BenchmarkHasCredentials: the header names of a bot's GET, none secret,
// and its query, as every cacheable request checks them.
func BenchmarkHasCredentials(b *testing.B) {
	r := httptest.NewRequest("GET", "https://api.binance.com/api/v3/ticker/price?symbol=BTCUSDT", nil)
	r.Header = http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}, "Accept": {"application/json"}, "Content-Type": {"application/json"}}
	for b.Loop() {
		if HasCredentials(r) {
			b.Fatal("credentials found")
		}
	}
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "http://x/", nil)
	WriteError(w, r, &Error{Status: 403, Msg: "host not listed", Host: "evil.test:443", Detail: `add "evil.test" to hosts`, ProxyStatus: "http_request_denied"})
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error"] != "host not listed" || body["host"] != "evil.test:443" {
		t.Errorf("body %q (err %v)", w.Body, err)
	}
	if ps := w.Header().Get("Proxy-Status"); ps != `sluice; error=http_request_denied; details="add \"evil.test\" to hosts"` {
		t.Errorf("Proxy-Status %q", ps)
	}
	if w.Code != 403 || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("status %d content type %q", w.Code, w.Header().Get("Content-Type"))
	}
}

func TestAccessLogLine(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := AccessLog(log, m, LogOptions{Queries: true})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := decision.From(r.Context())
		rec.Action, rec.Cache = decision.Intercept, decision.Hit
		w.Write([]byte("hello"))
	}))
	r := httptest.NewRequest("GET", "https://api.test/x?symbol=A&signature=SECRET", nil)
	r = r.WithContext(decision.WithEntry(r.Context(), decision.EntryIntercept))
	r.Header.Set("Authorization", "Bearer SECRET")
	h.ServeHTTP(httptest.NewRecorder(), r)
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("access line %q: %v", buf.String(), err)
	}
	if line["path"] != "/x?signature=REDACTED&symbol=A" || line["status"] != 200.0 || line["bytes_out"] != 5.0 || line["cache"] != "hit" || line["mode"] != "intercept" || line["decision"] != "intercept" {
		t.Errorf("access line %v", line)
	}
	if strings.Contains(buf.String(), "SECRET") {
		t.Errorf("secret logged: %s", buf.String())
	}
}

func TestLogWriterFlushes(t *testing.T) {
	var mu = make(chan struct{}, 1)
	out := &lockedBuffer{ch: mu}
	lw := NewLogWriter(out, 20*time.Millisecond)
	lw.Write([]byte("line\n"))
	if out.String() != "" {
		t.Fatal("written through at once; want buffered")
	}
	for range 200 {
		if out.String() == "line\n" {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("buffered line not written out after its delay: %q", out.String())
}

type lockedBuffer struct {
	ch chan struct{}
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.ch <- struct{}{}
	defer func() { <-l.ch }()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.ch <- struct{}{}
	defer func() { <-l.ch }()
	return l.b.String()
}

// TestJSONLinesMatchSlog: the direct JSON access line says what the slog
// JSON handler says, for awkward strings too.
func TestJSONLinesMatchSlog(t *testing.T) {
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	awkward := "quote\" backslash\\ tab\t newline\n nul\x00 bell\x07 bad\xff utf8 é ✓ <html>&"
	run := func(opts LogOptions, log *slog.Logger) {
		h := AccessLog(log, m, opts)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := decision.From(r.Context())
			rec.Action, rec.Cache, rec.Rule, rec.Reason = decision.Intercept, decision.Miss, "api.test", awkward
			rec.RefusedBy, rec.RuleSet, rec.Check, rec.Budget = decision.Rules, "binance", "path", "binance-spot"
			rec.Err = errors.New(awkward)
			w.WriteHeader(http.StatusForbidden)
		}))
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "https://api.test/x", nil))
	}
	var viaSlog, direct bytes.Buffer
	run(LogOptions{}, slog.New(slog.NewJSONHandler(&viaSlog, nil)))
	run(LogOptions{JSONLines: &direct}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	var a, b map[string]any
	if err := json.Unmarshal(viaSlog.Bytes(), &a); err != nil {
		t.Fatalf("slog line %q: %v", viaSlog.String(), err)
	}
	if err := json.Unmarshal(direct.Bytes(), &b); err != nil {
		t.Fatalf("direct line %q: %v", direct.String(), err)
	}
	for _, k := range []string{"time", "duration", "budget_wait"} {
		if _, ok := b[k]; !ok {
			t.Errorf("direct line lacks %q", k)
		}
		delete(a, k)
		delete(b, k)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("lines differ:\nslog   %v\ndirect %v", a, b)
	}
	if strings.Count(direct.String(), "\n") != 1 {
		t.Errorf("direct line is not one line: %q", direct.String())
	}
}

// TestRefusalsKeepLittle: the last refusals are kept newest first, at
// most keptRefusals of them, and a hostile path is clipped.
func TestRefusalsKeepLittle(t *testing.T) {
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range keptRefusals + 5 {
		m.refusals.add(&decision.Record{RefusedBy: decision.Policy, Method: "GET", Path: fmt.Sprintf("/%d/", i) + strings.Repeat("x", 10000)})
	}
	got := m.Refusals()
	if len(got) != keptRefusals || !strings.HasPrefix(got[0].Path, fmt.Sprintf("/%d/", keptRefusals+4)) {
		t.Fatalf("%d refusals kept, the newest %.10q", len(got), got[0].Path)
	}
	if n := len(got[0].Path); n > maxShown+len("…") {
		t.Errorf("a 10 kB path kept as %d bytes", n)
	}
}

// TestLineTimeMatchesRFC3339Nano: the access line's time, formatted once a
// second, is what time.RFC3339Nano gives, for every fraction and zone.
func TestLineTimeMatchesRFC3339Nano(t *testing.T) {
	base := time.Date(2026, 12, 2, 13, 21, 50, 0, time.UTC)
	zones := []*time.Location{time.UTC, time.FixedZone("", 5*3600+30*60), time.FixedZone("", -8*3600), time.Local}
	for _, loc := range zones {
		for _, ns := range []int{0, 1, 10, 100_000, 120_000_000, 999_999_999, 500_000_000, 123_456_789} {
			for _, sec := range []time.Duration{0, time.Second, 0} { // the same second again: from the cache
				tm := base.Add(sec + time.Duration(ns)).In(loc)
				if got, want := string(appendRFC3339Nano(nil, tm)), tm.Format(time.RFC3339Nano); got != want {
					t.Errorf("%v: %q, want %q", tm, got, want)
				}
			}
		}
	}
}
