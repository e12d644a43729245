package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	"sluice/internal/testpki"
)

// TestUpgradeThroughIntercept: a WebSocket-style upgrade inside an
// intercepted CONNECT reaches the upstream and the two ends then talk.
func TestUpgradeThroughIntercept(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		w.WriteHeader(http.StatusSwitchingProtocols)
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo " + line)
		brw.Flush()
	}), "stream.test")
	up.EnableHTTP2 = false
	h := newHarness(t, upstreamEntry(t, "stream.test", upCA.WritePEM(t, t.TempDir()), up.Listener.Addr().String()))

	c, err := net.Dial("tcp", h.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "CONNECT stream.test:443 HTTP/1.1\r\nHost: stream.test:443\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "stream.test", RootCAs: h.pool(), NextProtos: []string{"http/1.1"}})
	fmt.Fprint(tc, "GET /ws HTTP/1.1\r\nHost: stream.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	tbr := bufio.NewReader(tc)
	resp, err := http.ReadResponse(tbr, &http.Request{Method: http.MethodGet})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		t.Fatalf("upgrade: %v %v %s", resp, err, body)
	}
	fmt.Fprint(tc, "hello\n")
	if line, err := tbr.ReadString('\n'); err != nil || line != "echo hello\n" {
		t.Errorf("after the upgrade: %q %v", line, err)
	}
}
