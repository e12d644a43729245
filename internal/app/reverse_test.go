package app

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"sluice/internal/testpki"
)

func echoClientBackend(t *testing.T) *httptest.Server {
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "client="+r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(b.Close)
	return b
}

func rawGET(t *testing.T, addr, preamble string, hdr ...string) (int, string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, preamble+"GET /x HTTP/1.1\r\nHost: node\r\n"+strings.Join(hdr, "")+"Connection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestReverseClientIP: X-Forwarded-For and the PROXY protocol name the
// client only when the peer is a trusted proxy.
func TestReverseClientIP(t *testing.T) {
	b := echoClientBackend(t)
	for _, tt := range []struct {
		name, trusted, preamble, xff, want string
		proxyProto                         bool
	}{
		{"untrusted peer, forged XFF", "[10.0.0.0/8]", "", "203.0.113.9", "client=127.0.0.1", false},
		{"trusted peer", "[127.0.0.1]", "", "203.0.113.9", "client=203.0.113.9", false},
		{"trusted chain", "[127.0.0.1, 10.0.0.0/8]", "", "203.0.113.9, 10.1.2.3", "client=203.0.113.9", false},
		{"PROXY v1 from a trusted peer", "[127.0.0.1]", "PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n", "", "client=198.51.100.7", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pp := ""
			if tt.proxyProto {
				pp = ", proxy_protocol: true"
			}
			r := startRun(t, fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: \"off\", reverse: {addr: 127.0.0.1:0, backend: %s, cache: \"off\", trusted_proxies: %s%s}}\ndata_dir: data\nhosts: {}\n", b.URL, tt.trusted, pp))
			var hdr []string
			if tt.xff != "" {
				hdr = append(hdr, "X-Forwarded-For: "+tt.xff+"\r\n")
			}
			if code, body := rawGET(t, r.addrs["reverse"], tt.preamble, hdr...); code != 200 || body != tt.want {
				t.Errorf("%d %q, want %q", code, body, tt.want)
			}
		})
	}
}

// TestReverseTLSAndRules: the reverse listener with the operator's
// certificate and the eosio rule set, answering in the node filter's format.
func TestReverseTLSAndRules(t *testing.T) {
	b := echoClientBackend(t)
	dir := t.TempDir()
	ca := testpki.NewCA(t, "operator CA")
	leaf := ca.Leaf(t, "node.example", "127.0.0.1")
	kb, _ := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	os.WriteFile(filepath.Join(dir, "node.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}), 0o644)
	os.WriteFile(filepath.Join(dir, "node.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
	r := startRun(t, fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: \"off\", reverse: {addr: 127.0.0.1:0, backend: %s, cache: \"off\", rules: eosio, tls_cert: %s/node.pem, tls_key: %s/node.key}}\ndata_dir: data\nhosts: {}\n", b.URL, dir, dir))
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	resp, err := c.Post("https://"+r.addrs["reverse"]+"/v1/chain/push_transaction", "application/json",
		strings.NewReader(`{"signatures":[],"actions":[{"account":"eosio.msig","name":"propose"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || resp.Header.Get("X-REJECTED-BY") == "" || !strings.Contains(string(body), `"code":400`) {
		t.Errorf("denied contract: %d %s %q, want the eosio answer", resp.StatusCode, body, resp.Header.Get("X-REJECTED-BY"))
	}
	resp, err = c.Post("https://"+r.addrs["reverse"]+"/v1/chain/push_transaction", "application/json",
		strings.NewReader(`{"signatures":[],"actions":[{"account":"eosio.token","name":"transfer"}]}`))
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("allowed transaction over TLS: %v %v", resp, err)
	}
}

// TestReverseHop: the reverse listener passes 1xx interim responses on,
// also for a GET that fills the standard cache; it adds its Via both
// ways; and it honours Max-Forwards on OPTIONS and TRACE.
func TestReverseHop(t *testing.T) {
	var hits atomic.Int64
	var seen atomic.Value
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		seen.Store(r.Header.Clone())
		w.Header().Set("Link", "</app.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "ok")
	}))
	t.Cleanup(b.Close)
	r := startRun(t, fmt.Sprintf("listen: {proxy: 127.0.0.1:0, admin: \"off\", reverse: {addr: 127.0.0.1:0, backend: %s}}\ndata_dir: data\nhosts: {}\n", b.URL))
	base := "http://" + r.addrs["reverse"]
	send := func(method, path string, hdr ...string) (resp *http.Response, body string, hints []string) {
		t.Helper()
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprintf("%d %s", code, h.Get("Link")))
			return nil
		}}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		bb, _ := io.ReadAll(resp.Body)
		return resp, string(bb), hints
	}
	want103 := []string{"103 </app.css>; rel=preload"}
	for _, method := range []string{"GET", "POST"} { // a POST invalidates the GET's entry: both reach the backend
		resp, body, hints := send(method, "/page")
		if !slices.Equal(hints, want103) || body != "ok" {
			t.Errorf("%s (X-Cache %q): interim responses %q body %q, want %q then the body", method, resp.Header.Get("X-Cache"), hints, body, want103)
		}
		if got := resp.Header.Get("Via"); got != "1.1 sluice" {
			t.Errorf("%s: response Via %q, want 1.1 sluice", method, got)
		}
		if got := seen.Load().(http.Header).Get("Via"); got != "1.1 sluice" {
			t.Errorf("%s: the backend saw Via %q, want 1.1 sluice", method, got)
		}
	}
	send("GET", "/page")
	if resp, _, hints := send("GET", "/page"); resp.Header.Get("X-Cache") != "HIT" || len(hints) != 0 || resp.Header.Get("Via") != "1.1 sluice" {
		t.Errorf("a GET after a GET: X-Cache %q, interim %q, Via %q; want a HIT with the stored Via, without the fill's hints", resp.Header.Get("X-Cache"), hints, resp.Header.Get("Via"))
	}

	before := hits.Load()
	resp, _, _ := send("OPTIONS", "/page", "Max-Forwards", "0")
	if resp.StatusCode != 200 || resp.Header.Get("Allow") == "" || hits.Load() != before {
		t.Errorf("OPTIONS with Max-Forwards 0: %d, Allow %q, backend hits +%d; want sluice's own 200 with Allow", resp.StatusCode, resp.Header.Get("Allow"), hits.Load()-before)
	}
	resp, body, _ := send("TRACE", "/page", "Max-Forwards", "0", "Cookie", "sess=marker-cookie", "X-Probe", "yes")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "message/http" || !strings.HasPrefix(body, "TRACE /page HTTP/1.1\r\n") ||
		!strings.Contains(body, "X-Probe: yes") || strings.Contains(body, "marker-cookie") || hits.Load() != before {
		t.Errorf("TRACE with Max-Forwards 0: %d %q\n%s\nwant sluice's own echo without the cookie", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	send("OPTIONS", "/page", "Max-Forwards", "3")
	if got := seen.Load().(http.Header).Get("Max-Forwards"); got != "2" || hits.Load() != before+1 {
		t.Errorf("OPTIONS with Max-Forwards 3: the backend saw %q, want 2", got)
	}
	if resp, _, _ := send("OPTIONS", "/page", "Max-Forwards", "many"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("OPTIONS with Max-Forwards many: %d, want 400", resp.StatusCode)
	}
}
