package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func adminDo(t *testing.T, r *running, method, path, token string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+r.addrs["admin"]+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminAPI: the token guards config and bans; a bad PUT /config is
// refused with every error while the old rules keep running; bans are
// added and lifted live.
func TestAdminAPI(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "a.test", "b.test")
	lines := strings.SplitAfter(hosts, "\n")
	r := startRun(t, baseConfig(lines[0]))
	tokenBytes, err := os.ReadFile(filepath.Join(r.dir, "data", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(r.dir, "data", "admin.token")); fi.Mode().Perm() != 0o600 {
		t.Errorf("admin.token mode %v, want 0600", fi.Mode().Perm())
	}
	token := strings.TrimSpace(string(tokenBytes))

	for _, p := range []string{"/config", "/bans", "/v1/blobs"} {
		if code, _ := adminDo(t, r, "GET", p, "", nil); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d, want 401", p, code)
		}
		if code, _ := adminDo(t, r, "GET", p, "wrong", nil); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d, want 401", p, code)
		}
	}
	if code, _ := adminDo(t, r, "GET", "/ca.pem", "", nil); code != 200 {
		t.Errorf("GET /ca.pem without a token: %d, want 200 (public)", code)
	}
	code, body := adminDo(t, r, "GET", "/config", token, nil)
	if code != 200 || !strings.Contains(body, "a.test") {
		t.Errorf("GET /config: %d %s", code, body)
	}

	bad := baseConfig(hosts) + "  c.test: {mode: nope, ports: [0]}\n"
	code, body = adminDo(t, r, "PUT", "/config", token, []byte(bad))
	if code != 400 || !strings.Contains(body, "nope") || !strings.Contains(body, "port 0") {
		t.Errorf("PUT of a bad config: %d %s; want 400 listing every error", code, body)
	}
	c := r.client()
	if _, err := c.Get("https://b.test/"); err == nil {
		t.Error("b.test allowed after a refused PUT")
	}
	if code, body = adminDo(t, r, "PUT", "/config", token, []byte(baseConfig(hosts))); code != 200 {
		t.Fatalf("PUT of a good config: %d %s", code, body)
	}
	if got := status(t, c, "https://b.test/"); got != 200 {
		t.Errorf("b.test after the PUT: %d", got)
	}
	// A config past the limit is refused whole, never cut and applied; an
	// empty one is an error, not an allowlist of nothing.
	huge := baseConfig(hosts) + "# " + strings.Repeat("x", 17<<20) + "\n"
	if code, body = adminDo(t, r, "PUT", "/config", token, []byte(huge)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT of a 17 MiB config: %d %s, want 413", code, body)
	}
	for _, empty := range []string{"", "# nothing but a comment\n"} {
		if code, body = adminDo(t, r, "PUT", "/config", token, []byte(empty)); code != 400 || !strings.Contains(body, "empty") {
			t.Errorf("PUT of %q: %d %s, want 400 naming the empty config", empty, code, body)
		}
	}
	if got := status(t, c, "https://b.test/"); got != 200 {
		t.Errorf("b.test after the refused PUTs: %d, want the allowlist unchanged", got)
	}

	if code, body = adminDo(t, r, "POST", "/bans", token, []byte(`{"client":"127.0.0.1","duration":"1h","reason":"test"}`)); code != 200 {
		t.Fatalf("POST /bans: %d %s", code, body)
	}
	c.CloseIdleConnections()
	if _, err := c.Get("https://a.test/"); err == nil || !strings.Contains(err.Error(), "sluice: client banned") {
		t.Errorf("banned client: %v, want its CONNECT refused", err)
	}
	var out bytes.Buffer
	cli := r.cliConfig()
	if err := Run(context.Background(), []string{"bans", "-c", cli, "ls"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "127.0.0.1") {
		t.Errorf("sluice bans ls: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := Run(context.Background(), []string{"bans", "-c", cli, "rm", "127.0.0.1"}, &out, io.Discard); err != nil || out.String() != "lifted the ban of 127.0.0.1\n" {
		t.Errorf("sluice bans rm: %v %q", err, out.String())
	}
	if got := status(t, c, "https://a.test/"); got != 200 {
		t.Errorf("after the ban was lifted: %d", got)
	}
	// The documented form: flags after the arguments, -c last.
	out.Reset()
	if err := Run(context.Background(), []string{"bans", "add", "198.51.100.9", "--for", "2h", "--reason", "scraping", "-c", cli}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "banned 198.51.100.9 until ") || !strings.HasSuffix(out.String(), " (scraping)\n") {
		t.Errorf("sluice bans add IP --for 2h --reason scraping -c FILE: %v %q", err, out.String())
	}
	out.Reset()
	if err := Run(context.Background(), []string{"bans", "ls", "--config", cli}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "198.51.100.9") || !strings.Contains(out.String(), "scraping") {
		t.Errorf("sluice bans ls after add: %v\n%s", err, out.String())
	}
	out.Reset()
	os.WriteFile(cli, []byte(strings.Replace(readFile(t, cli), "  b.test", "  #b.test", 1)), 0o644)
	if err := Run(context.Background(), []string{"reload", "-c", cli}, &out, io.Discard); err != nil {
		t.Fatalf("sluice reload: %v", err)
	}
	c.CloseIdleConnections()
	if _, err := c.Get("https://b.test/"); err == nil {
		t.Error("b.test still allowed after sluice reload removed it")
	}
}

// TestEveryCommandHelp: --help on every command says what it does, its
// flags and an example, and succeeds.
func TestEveryCommandHelp(t *testing.T) {
	for name := range commands {
		for _, help := range []string{"--help", "-h"} {
			var out, errOut bytes.Buffer
			args := append(strings.Fields(name), help)
			if err := Run(context.Background(), args, &out, &errOut); err != nil {
				t.Errorf("sluice %s: %v (stderr %q)", strings.Join(args, " "), err, errOut.String())
			}
			for _, want := range []string{"usage: sluice " + commands[name].synopsis, commands[name].what, "flags:", "example:\n  " + commands[name].example} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("sluice %s: output lacks %q:\n%s", strings.Join(args, " "), want, out.String())
				}
			}
		}
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"--help"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "usage:") {
		t.Errorf("sluice --help: %v\n%s", err, out.String())
	}
	reference := readFile(t, filepath.Join("..", "..", "docs", "reference", "commands.md"))
	// The usage lists every command, and a group's --help its own.
	for _, c := range commandTable {
		if !strings.Contains(out.String(), "sluice "+c.synopsis+"\n") {
			t.Errorf("sluice --help does not list %q", c.synopsis)
		}
		if !strings.Contains(reference, "| `sluice "+c.name) {
			t.Errorf("docs/reference/commands.md has no row for sluice %s", c.name)
		}
		if group, _, ok := strings.Cut(c.name, " "); ok {
			var gout bytes.Buffer
			if err := Run(context.Background(), []string{group, "--help"}, &gout, io.Discard); err != nil || !strings.Contains(gout.String(), "sluice "+c.synopsis+"\n") {
				t.Errorf("sluice %s --help: %v, lacks %q:\n%s", group, err, c.synopsis, gout.String())
			}
		}
	}
}

// TestReloadResolvesAgainstTheFile: sluice reload -c FILE reads FILE's
// relative paths against FILE's directory (not the server's), finds the
// running sluice's token although FILE names another data_dir, and says
// which changes wait for a restart.
func TestReloadResolvesAgainstTheFile(t *testing.T) {
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "a.test", "b.test")
	lines := strings.SplitAfter(hosts, "\n")
	r := startRun(t, baseConfig(lines[0]))
	c := r.client()
	if _, err := c.Get("https://b.test/"); err == nil || !strings.Contains(err.Error(), "host not listed") {
		t.Fatalf("b.test before the reload: %v, want its CONNECT refused", err)
	}
	// FILE elsewhere, with b.test's upstream CA beside it, named relatively.
	other := t.TempDir()
	_, rest, _ := strings.Cut(lines[1], "upstream_ca: ")
	caPath, _, _ := strings.Cut(rest, ",")
	if err := os.WriteFile(filepath.Join(other, "b-ca.pem"), []byte(readFile(t, caPath)), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(other, "sluice.yaml")
	doc := fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: %s}\ndata_dir: elsewhere\ntimeouts: {shutdown: 5s}\nhosts:\n%s%s",
		r.addrs["admin"], lines[0], strings.Replace(lines[1], caPath, "b-ca.pem", 1))
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"reload", "-c", file}, &out, io.Discard); err != nil {
		t.Fatalf("sluice reload -c %s: %v\n%s", file, err, out.String())
	}
	for _, want := range []string{"config swapped in", "changed data_dir: takes effect after a restart", "changed listen.admin: takes effect after a restart"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("sluice reload printed %q, want a line %q", out.String(), want)
		}
	}
	c.CloseIdleConnections()
	if got := status(t, c, "https://b.test/"); got != 200 {
		t.Errorf("b.test after the reload: %d, want 200 (its upstream_ca read from beside FILE)", got)
	}

	// The same file again: data_dir still differs from what runs, though
	// not from the last reload; log.format is restart-only too, log.level not.
	os.WriteFile(file, []byte(doc+"log: {format: text, level: debug}\n"), 0o644)
	out.Reset()
	if err := Run(context.Background(), []string{"reload", "-c", file}, &out, io.Discard); err != nil {
		t.Fatalf("second sluice reload: %v\n%s", err, out.String())
	}
	for _, want := range []string{"changed data_dir: takes effect after a restart", "changed log.format: takes effect after a restart"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("second sluice reload printed %q, want a line %q", out.String(), want)
		}
	}
	if strings.Contains(out.String(), "log.level") {
		t.Errorf("second sluice reload printed %q: log.level is applied by a reload", out.String())
	}

	// A file that does not validate: nothing is sent, and sluice reload
	// says the running config stays.
	os.WriteFile(file, []byte(doc+"timeouts: {dial: never}\n"), 0o644)
	err := Run(context.Background(), []string{"reload", "-c", file}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "the running config stays") {
		t.Errorf("sluice reload of a bad file: %v, want an error saying the running config stays", err)
	}
}

// TestDNSPinsNone: sluice dns pins says so when there are none yet, and
// when the running sluice keeps none at all (dns.pin: off).
func TestDNSPinsNone(t *testing.T) {
	for _, tc := range []struct{ pin, want string }{{"first", "no DNS pins yet"}, {"off", "pins no DNS answers (dns.pin: off"}} {
		r := startRun(t, baseConfig("  a.test: {}\n")+"dns: {pin: "+tc.pin+"}\n")
		var out bytes.Buffer
		err := Run(context.Background(), []string{"dns", "pins", "-c", r.cliConfig()}, &out, io.Discard)
		if got := out.String() + fmt.Sprint(err); !strings.Contains(got, tc.want) {
			t.Errorf("sluice dns pins with dns.pin: %s: %q, want %q", tc.pin, got, tc.want)
		}
	}
}
