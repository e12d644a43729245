package app

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
