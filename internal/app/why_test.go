package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sluice/internal/route"
)

// TestWhy: sluice why gives the running sluice's answer, stage by stage,
// and it is the answer the pipeline gives the same request: refused by
// the same stage with the same status, or let through.
func TestWhy(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "a.test", "b.test")
	hosts = strings.Replace(hosts, "  a.test: {", "  a.test: {rules: only_get, ", 1)
	cfg := baseConfig(hosts) + "rule_sets:\n  only_get: {methods: [GET]}\n" +
		"clients:\n  bot: {addresses: [127.0.0.1], hosts: [a.test]}\n  other: {addresses: [192.0.2.1], hosts: [b.test]}\n"
	r := startRun(t, cfg)
	cli := r.cliConfig()
	why := func(args ...string) (string, route.WhyAnswer) {
		t.Helper()
		var out bytes.Buffer
		if err := Run(context.Background(), append([]string{"why", "-c", cli, "--json"}, args...), &out, io.Discard); err != nil {
			t.Fatalf("sluice why %v: %v", args, err)
		}
		var got struct {
			AnsweredBy string          `json:"answered_by"`
			Answer     route.WhyAnswer `json:"answer"`
		}
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("sluice why %v --json: %q: %v", args, out.String(), err)
		}
		return got.AnsweredBy, got.Answer
	}
	c := r.client() // from 127.0.0.1: client bot
	for _, tc := range []struct {
		args      []string
		refusedBy string
		status    int
		send      func() int
	}{
		{[]string{"a.test", "GET", "/x", "--client", "bot"}, "", 0, func() int { return status(t, c, "https://a.test/x") }},
		{[]string{"a.test", "POST", "/x", "--client", "bot"}, "rules", 0, func() int {
			resp, err := c.Post("https://a.test/x", "text/plain", strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}},
		{[]string{"evil.test", "--client", "bot"}, "policy", http.StatusForbidden, nil},
		{[]string{"b.test", "GET", "/", "--client", "bot"}, "grants", http.StatusForbidden, nil},
		{[]string{"a.test", "--client", "nobody"}, "client identity", http.StatusProxyAuthRequired, nil},
	} {
		by, a := why(tc.args...)
		if !strings.HasPrefix(by, "the running sluice") {
			t.Errorf("sluice why %v answered by %q, want the running sluice", tc.args, by)
		}
		if a.RefusedBy != tc.refusedBy || a.Allowed != (tc.refusedBy == "") {
			t.Errorf("sluice why %v: refused by %q (allowed %v), want %q\n%+v", tc.args, a.RefusedBy, a.Allowed, tc.refusedBy, a.Steps)
		}
		if tc.status != 0 && a.Status != tc.status {
			t.Errorf("sluice why %v: status %d, want %d", tc.args, a.Status, tc.status)
		}
		if tc.send != nil {
			want := http.StatusOK
			if !a.Allowed {
				want = a.Status
			}
			if got := tc.send(); got != want {
				t.Errorf("sluice why %v says %d; the pipeline answered %d", tc.args, want, got)
			}
		}
	}

	// A banned client is refused at the ban gate, as the pipeline refuses it.
	if err := Run(context.Background(), []string{"bans", "add", "client:bot", "--for", "1h", "--reason", "why test", "-c", cli}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, a := why("a.test", "--client", "bot"); a.RefusedBy != "ban gate" || !strings.Contains(a.Steps[len(a.Steps)-1].Detail, "why test") {
		t.Errorf("sluice why for a banned client: %+v", a)
	}

	// With no sluice running, the config file answers, and says so.
	cfgFile := filepath.Join(t.TempDir(), "other.yaml")
	os.WriteFile(cfgFile, []byte(strings.Replace(cfg, "admin: 127.0.0.1:0", "admin: 127.0.0.1:1", 1)), 0o644)
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"why", "-c", cfgFile, "evil.test"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"refused by policy (403)", `add "evil.test" to hosts`, "answered by the config file"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("sluice why without a running sluice lacks %q:\n%s", want, out.String())
		}
	}
}
