package app

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNoSecretInLogsOrDataDir runs a whole session at debug level with
// marker secrets in headers, query strings and bodies (forwarded, cached,
// refused by a rule, stored as a blob, failing upstream), stops sluice, and
// looks for every marker in every log line and every file of the data dir.
func TestNoSecretInLogsOrDataDir(t *testing.T) {
	blob := []byte("immutable layer bytes")
	sum := sha256.Sum256(blob)
	blobPath := "/v2/app/blobs/sha256:" + hex.EncodeToString(sum[:])
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == blobPath {
			w.Write(blob)
			return
		}
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.Header().Set("Set-Cookie", "sess=MARKER-setcookie")
		io.WriteString(w, "ok")
	}), "api.test")
	hosts = strings.TrimSuffix(hosts, "}\n") + ", rules: strict, cache: {rules: [{path: /cached, ttl: 1m, public: true}]}}\n"
	cfg := strings.Replace(baseConfig(hosts), "timeouts:", "log: {level: debug, queries: true}\nrule_sets:\n  strict:\n    deny_paths: [{prefix: /withdraw}]\ntimeouts:", 1)
	r := startRun(t, cfg)
	c := r.client()
	var markers []string
	marker := func(what string) string {
		m := fmt.Sprintf("MARKER%02d-%s", len(markers), what)
		markers = append(markers, m)
		return m
	}
	send := func(method, path string, hdr map[string]string, body string) {
		req, _ := http.NewRequest(method, "https://api.test"+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	secretQuery := func() string {
		return "?symbol=BTCUSDT&signature=" + marker("signature") + "&apiKey=" + marker("apikey") + "&token=" + marker("token") +
			"&X-Amz-Signature=" + marker("amzsig") + "&X-Amz-Credential=" + marker("amzcred") + "&access_token=" + marker("access")
	}
	secretHeaders := func() map[string]string {
		return map[string]string{"Authorization": "Bearer " + marker("bearer"), "X-MBX-APIKEY": marker("mbx"),
			"Cookie": "sess=" + marker("cookie"), "X-Shopify-Access-Token": marker("shopify"), "OK-ACCESS-PASSPHRASE": marker("okx")}
	}
	send("GET", "/api/v3/account"+secretQuery(), secretHeaders(), "")
	send("POST", "/api/v3/order"+secretQuery(), secretHeaders(), "secret="+marker("body"))
	send("GET", "/cached"+secretQuery(), secretHeaders(), "")
	send("GET", "/cached"+secretQuery(), nil, "")
	send("GET", "/withdraw/apply"+secretQuery(), secretHeaders(), "")
	send("GET", blobPath+secretQuery(), secretHeaders(), "")
	send("GET", blobPath+secretQuery(), nil, "")
	send("GET", "/fail"+secretQuery(), secretHeaders(), "")
	if len(markers) < 20 {
		t.Fatalf("only %d markers sent", len(markers))
	}
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup that waits for it too
	case <-time.After(30 * time.Second):
		t.Fatal("sluice did not stop")
	}
	logs := r.stderr.String()
	if !strings.Contains(logs, `"path":"/withdraw/apply`) || !strings.Contains(logs, "rule_violation") {
		t.Fatalf("the session did not log what it should have:\n%s", logs)
	}
	var files []string
	filepath.WalkDir(filepath.Join(r.dir, "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	for _, m := range markers {
		if strings.Contains(logs, m) {
			t.Errorf("%s is in the log", m)
		}
		for _, f := range files {
			if data, _ := os.ReadFile(f); strings.Contains(string(data), m) {
				t.Errorf("%s is in %s", m, f)
			}
		}
	}
	if strings.Contains(logs, "MARKER-setcookie") {
		t.Error("the upstream's Set-Cookie is in the log")
	}
}
