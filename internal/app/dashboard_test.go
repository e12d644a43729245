package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// TestDashboardInChromium opens the admin listener's page in headless
// Chromium: it loads with no console error, its numbers change while the
// test sends load through sluice, an unban without the token is refused
// and with it works. A screenshot is saved (SLUICE_ARTIFACTS, or the
// test's temp dir).
// headless starts Chromium with proxy as its proxy, for a minute at most;
// it ends with the test.
func headless(t *testing.T, browser, proxy string) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.ProxyServer(proxy), chromedp.WindowSize(1280, 1400))
	actx, cancel := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDashboardInChromium(t *testing.T) {
	browser := testenv.RequireTool(t, "chromium")
	upCA := testpki.NewCA(t, "upstream CA")
	srv := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"symbol":%q}`, r.URL.Query().Get("symbol"))
	}), "api.test")
	r := startRun(t, fmt.Sprintf(`listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}
data_dir: data
hosts:
  api.test:
    upstream_ca: %s
    connect_to: %s
    allow_private: true
    cache: {rules: [{path: /api/, ttl: 1m}]}
`, upCA.WritePEM(t, t.TempDir()), srv.Listener.Addr()))
	admin := "http://" + r.addrs["admin"]
	token := strings.TrimSpace(readFile(t, filepath.Join(r.dir, "data", "admin.token")))
	adminDo := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, admin+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := adminDo(http.MethodPost, "/bans", `{"client":"203.0.113.9","duration":"1h","reason":"dashboard test"}`); code != http.StatusOK {
		t.Fatalf("POST /bans: %d %s", code, body)
	}

	// Anything not on loopback goes to a closed port: the test talks to nothing else.
	ctx := headless(t, browser, "http://127.0.0.1:9")
	var mu sync.Mutex
	var problems []string
	console := chromedp.Console(ctx) // subscribed now: no message of the page is lost
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			// The unban refused without a token is the one expected failure.
			if (m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException()) && !strings.Contains(m.Text, "401") {
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				mu.Unlock()
			}
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate(admin+"/"), chromedp.WaitVisible(chromedp.CSS("#live.on"))); err != nil {
		t.Fatalf("the page did not go live: %v", err)
	}
	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return s
	}
	waitText := func(sel, what string, ok func(string) bool) string {
		t.Helper()
		var s string
		for range 100 {
			if s = text(sel); ok(s) {
				return s
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s after 10 s: %q; want %s", sel, s, what)
		return ""
	}
	savedBefore := text("#t-saved")

	// Load: the same few keys again and again, so that the cache saves calls.
	c := r.client()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := c.Get(fmt.Sprintf("https://api.test/api/v3/ticker?symbol=S%d", i%5))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	waitText("#t-requests", "requests per second above 0", func(s string) bool { return s != "0" && s != "–" })
	saved := waitText("#t-saved", "upstream calls saved to grow", func(s string) bool { return s != savedBefore && s != "0" })
	close(stop)
	wg.Wait()
	t.Logf("upstream calls saved went from %s to %s while the test sent load", savedBefore, saved)
	bansText := waitText("#bans tbody", "the ban listed", func(s string) bool { return strings.Contains(s, "203.0.113.9") })
	// Times read as sluice status prints them (local, 24-hour, the date with a ban's end).
	var listed []struct{ Until time.Time }
	_, body := adminDo(http.MethodGet, "/bans", "")
	if err := json.Unmarshal([]byte(body), &listed); err != nil || len(listed) != 1 {
		t.Fatalf("GET /bans: %v %s", err, body)
	}
	if until := listed[0].Until.Local().Format(time.DateTime); !strings.Contains(bansText, until) {
		t.Errorf("the ban's end on the dashboard: %q, want it as sluice status prints it, %s", bansText, until)
	}
	// The chart has a time axis: a label at each minute of its five.
	if axis := text("#chart-axis"); len(regexp.MustCompile(`\d\d:\d\d`).FindAllString(axis, -1)) < 5 {
		t.Errorf("the chart's time axis: %q, want a label HH:MM at each of five minutes", axis)
	}

	// Unban without the token: refused, and the ban holds.
	unban := chromedp.Click(chromedp.CSS(`#bans button[data-client="203.0.113.9"]`))
	if err := chromedp.Do(ctx, unban); err != nil {
		t.Fatal(err)
	}
	waitText("#action-msg", "the unban refused", func(s string) bool { return strings.Contains(s, "refused (401)") })
	if _, body := adminDo(http.MethodGet, "/bans", ""); !strings.Contains(body, "203.0.113.9") {
		t.Fatalf("an unban without the token lifted the ban: %s", body)
	}
	// With the token: lifted.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#token"), token), unban); err != nil {
		t.Fatal(err)
	}
	waitText("#action-msg", "the ban lifted", func(s string) bool { return strings.Contains(s, "lifted") })
	if _, body := adminDo(http.MethodGet, "/bans", ""); strings.Contains(body, "203.0.113.9") {
		t.Fatalf("an unban with the token did not lift the ban: %s", body)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("SLUICE_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dashboard.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("the page logged problems:\n%s", strings.Join(problems, "\n"))
	}
	if !bytes.HasPrefix(shot, []byte("\x89PNG")) {
		t.Error("the screenshot is not a PNG")
	}
}

// TestStatusCommand: sluice status prints the running sluice's numbers,
// --json its GET /status, and --watch redraws until interrupted.
func TestStatusCommand(t *testing.T) {
	r := startRun(t, baseConfig("  a.test: {}\n"))
	c := r.client()
	if _, err := c.Get("https://refused.test/x"); err == nil {
		t.Fatal("a host not listed was let through")
	}
	cli := r.cliConfig()
	var out bytes.Buffer
	testenv.WaitFor(t, 5*time.Second, "sluice status to list the refusal", func() bool {
		out.Reset()
		return Run(t.Context(), []string{"status", "-c", cli}, &out, io.Discard) == nil && strings.Contains(out.String(), "refused.test:443")
	})
	for _, want := range []string{"requests/s", "upstream calls saved", "LAST REFUSALS", "CONNECT", "host not listed", "BANS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("sluice status has no %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := Run(t.Context(), []string{"status", "--json", "-c", cli}, &out, io.Discard); err != nil || !strings.Contains(out.String(), `"refusals":[{`) {
		t.Errorf("sluice status --json: %v\n%s", err, out.String())
	}
	// The watch is interrupted once it has redrawn the screen twice, as a
	// user's Ctrl-C would; the deadline only bounds a watch that never does.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	screens := &screenCounter{after: 2, stop: cancel}
	if err := Run(ctx, []string{"status", "--watch", "--interval", "50ms", "-c", cli}, screens, io.Discard); err != nil {
		t.Fatal(err)
	}
	if screens.n < 2 {
		t.Errorf("sluice status --watch drew %d screens before it was stopped after 30 s", screens.n)
	}
	if err := Run(t.Context(), []string{"status", "extra", "-c", cli}, io.Discard, io.Discard); err == nil {
		t.Error("sluice status with an argument: no error")
	}
}

// screenCounter counts the screens sluice status --watch clears and calls
// stop once it has seen after of them.
type screenCounter struct {
	n, after int
	stop     func()
}

func (w *screenCounter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("\x1b[2J")) {
		if w.n++; w.n == w.after {
			w.stop()
		}
	}
	return len(p), nil
}
