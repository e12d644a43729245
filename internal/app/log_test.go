package app

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"sluice/internal/testenv"
)

// TestLogFollow: sluice log --follow prints each request's line as it
// ends, every one of them although log.level keeps them out of the log,
// filtered by --refused and --host; it ends when sluice stops. sluice log
// without --follow prints the lines kept.
func TestLogFollow(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "a.test", "b.test")
	r := startRun(t, baseConfig(hosts))
	cli := r.cliConfig()
	// log.level error (a reload: "sluice started" is an info line): the
	// requests' lines stay out of the log.
	os.WriteFile(cli, []byte(strings.Replace(readFile(t, cli), "timeouts:", "log: {level: error}\ntimeouts:", 1)), 0o644)
	if err := Run(context.Background(), []string{"reload", "-c", cli}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	c := r.client()

	all, refused := &testenv.Buffer{}, &testenv.Buffer{}
	done := make(chan error, 2)
	go func() {
		done <- Run(context.Background(), []string{"log", "-c", cli, "--follow", "--host", "a.test"}, all, io.Discard)
	}()
	go func() {
		done <- Run(context.Background(), []string{"log", "-c", cli, "-f", "--refused"}, refused, io.Discard)
	}()
	// Both followers are in once a line reaches each: until then, send.
	testenv.WaitFor(t, 10*time.Second, "both followers to get their lines", func() bool {
		status(t, c, "https://a.test/first")
		if _, err := c.Get("https://evil.test/"); err == nil {
			t.Fatal("evil.test was not refused")
		}
		return strings.Contains(all.String(), "/first") && strings.Contains(refused.String(), "CONNECT evil.test:443 403 ") && strings.Contains(refused.String(), " refused by policy: host not listed")
	})
	status(t, c, "https://b.test/other")
	if strings.Contains(refused.String(), "/first") {
		t.Errorf("--refused printed a request that was answered:\n%s", refused)
	}
	if strings.Contains(all.String(), "b.test") || strings.Contains(all.String(), "evil.test") {
		t.Errorf("--host a.test printed another host's lines:\n%s", all)
	}
	if !strings.Contains(all.String(), " GET a.test:443/first 200 ") {
		t.Errorf("sluice log --follow:\n%s", all)
	}
	if strings.Contains(r.log(), `"path":"/first"`) {
		t.Error("with log.level error, the request's line reached the log too")
	}

	var recent bytes.Buffer
	if err := Run(context.Background(), []string{"log", "-c", cli, "--json"}, &recent, io.Discard); err != nil || !strings.Contains(recent.String(), `"path":"/other"`) {
		t.Errorf("sluice log --json: %v\n%s", err, recent.String())
	}

	r.cancel()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sluice log --follow when sluice stopped: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("sluice log --follow did not end within 10 s of sluice stopping")
		}
	}
}
