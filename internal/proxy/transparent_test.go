package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"sluice/internal/testpki"
)

// transparentClient is a client that DNS sent to sluice: every name it
// dials reaches the transparent TLS listener, and it trusts roots.
func transparentClient(h *harness, roots *tls.Config) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", h.transparentTLSAddr)
		},
		TLSClientConfig: roots,
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestTransparentTLS: a client that believes it talks to the host gets an
// intercepted host served through the pipeline (by SNI, on 443), a
// tunneled one spliced with the upstream's own certificate, and an
// unlisted name, or none, refused with a TLS alert before anything is
// resolved or minted.
func TestTransparentTLS(t *testing.T) {
	upCA := testpki.NewCA(t, "upstream CA")
	up := upCA.Upstream(t, http.HandlerFunc(echoHandler), "api.test", "git.test")
	h := newHarness(t, fmt.Sprintf(`  api.test: {connect_to: %[1]s, allow_private: true, upstream_ca: %[2]s}
  git.test: {mode: tunnel, connect_to: %[1]s, allow_private: true}`, up.Listener.Addr(), upCA.WritePEM(t, t.TempDir())))

	c := transparentClient(h, &tls.Config{RootCAs: h.pool()})
	resp, body := get(t, c, "https://api.test/x?y=1")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"path":"/x"`) || !strings.Contains(string(body), `"host":"api.test"`) {
		t.Errorf("intercepted through the transparent listener: %d %s", resp.StatusCode, body)
	}
	if got := resp.TLS.PeerCertificates[0].Issuer.CommonName; got == "upstream CA" {
		t.Error("an intercepted host showed the upstream's certificate")
	}

	tunnel := transparentClient(h, &tls.Config{RootCAs: upCA.Pool()})
	resp, body = get(t, tunnel, "https://git.test/repo")
	if resp.StatusCode != http.StatusOK || resp.TLS.PeerCertificates[0].Issuer.CommonName != "upstream CA" {
		t.Errorf("tunneled through the transparent listener: %d %s", resp.StatusCode, body)
	}

	minted := h.metric("sluice_ca_leaves_minted_total", "", "")
	lookups := h.resolver.count()
	for _, name := range []string{"evil.test", ""} {
		conn, err := net.Dial("tcp", h.transparentTLSAddr)
		if err != nil {
			t.Fatal(err)
		}
		err = tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: name == "", RootCAs: h.pool()}).Handshake()
		conn.Close()
		if err == nil || !strings.Contains(err.Error(), "access denied") {
			t.Errorf("SNI %q: handshake %v, want an access_denied alert", name, err)
		}
	}
	if n := h.metric("sluice_ca_leaves_minted_total", "", ""); n != minted {
		t.Errorf("refused SNIs minted %v leaves", n-minted)
	}
	if n := h.resolver.count(); n != lookups {
		t.Errorf("refused SNIs were resolved (%d lookups)", n-lookups)
	}
	waitFor(t, "the refusals' access lines", func() bool {
		var denied, noSNI bool
		for _, l := range h.accessLines() {
			denied = denied || l["mode"] == "transparent_tls" && l["host"] == "evil.test:443" && l["decision"] == "deny"
			noSNI = noSNI || l["mode"] == "transparent_tls" && l["reason"] == "no SNI"
		}
		return denied && noSNI
	})
}

// TestTransparentHTTP: a plain request routed by its Host, on port 80: a
// host with plain_http is forwarded, an unlisted one refused 403, and a
// CONNECT is not taken there.
func TestTransparentHTTP(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(echoHandler))
	t.Cleanup(plain.Close)
	h := newHarness(t, fmt.Sprintf(`  deb.test: {plain_http: true, connect_to: %s, allow_private: true}`, plain.Listener.Addr()))
	send := func(method, host, path string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+h.transparentHTTPAddr+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s%s: %v", method, host, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := send("GET", "deb.test", "/dists/x"); code != http.StatusOK || !strings.Contains(body, `"path":"/dists/x"`) {
		t.Errorf("deb.test through the transparent HTTP listener: %d %s", code, body)
	}
	if code, body := send("GET", "evil.test", "/"); code != http.StatusForbidden || !strings.Contains(body, "host not listed") {
		t.Errorf("an unlisted Host: %d %s, want 403", code, body)
	}
	if resp, body := connect(t, h.transparentHTTPAddr, "deb.test:443"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("CONNECT on the transparent HTTP listener: %d %s, want 405", resp.StatusCode, body)
	}
}
