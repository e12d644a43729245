package proxy_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"

	"sluice/internal/testpki"
)

// BenchmarkGET compares a keep-alive GET straight to a TLS upstream with
// the same GET intercepted by sluice; the ratio of the two is sluice's
// per-request overhead.
func BenchmarkGET(b *testing.B) {
	body := []byte(`{"symbol":"BTCUSDT","price":"65745.70396954"}`)
	upCA := testpki.NewCA(b, "upstream CA")
	up := upCA.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }), "api.test")
	h := newHarness(b, upstreamEntry(nil, "api.test", upCA.WritePEM(b, b.TempDir()), up.Listener.Addr().String()))
	upAddr := up.Listener.Addr().String()
	direct := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: upCA.Pool()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, upAddr)
		},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	for _, bc := range []struct {
		name string
		c    *http.Client
	}{{"direct", direct}, {"intercepted", h.client(false)}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := bc.c.Get("https://api.test/api/v3/ticker/price?symbol=BTCUSDT")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}
