// Package onboard serves the onboarding page: at http://sluice.invalid/,
// a name that never resolves anywhere else (RFC 6761 reserves .invalid),
// a client that already goes through sluice gets sluice's CA in PEM, DER
// and PKCS#12 and how to trust it in each runtime, as mitmproxy's mitm.it
// does. sluice's DNS answers the name in transparent mode.
package onboard

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"html/template"
	"net/http"
	"strings"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"sluice/internal/ca"
	"sluice/internal/decision"
	"sluice/internal/obs"
)

// Host is the onboarding page's name.
const Host = "sluice.invalid"

// P12Password is the password of the PKCS#12 trust store (Java's
// default): it holds only the certificate, never a key.
const P12Password = "changeit"

// Page serves the onboarding page and the CA's files.
type Page struct {
	pem, der, p12 []byte
	html          []byte
}

// New prepares the page for the CA certificate certPEM.
func New(certPEM []byte) (*Page, error) {
	cert, err := ca.ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("onboarding page: the CA: %w", err)
	}
	block := &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}
	p12, err := pkcs12.Modern.EncodeTrustStore([]*x509.Certificate{cert}, P12Password)
	if err != nil {
		return nil, fmt.Errorf("onboarding page: %w", err)
	}
	sum := sha256.Sum256(cert.Raw)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	var html bytes.Buffer
	if err := page.Execute(&html, map[string]any{
		"Subject": cert.Subject.CommonName, "NotAfter": cert.NotAfter.Format("2006-01-02"),
		"Fingerprint": strings.Join(hexes, ":"), "Password": P12Password, "PEM": string(pem.EncodeToMemory(block)),
	}); err != nil {
		return nil, err
	}
	return &Page{pem: pem.EncodeToMemory(block), der: cert.Raw, p12: p12, html: html.Bytes()}, nil
}

// Middleware answers every request for Host itself; nothing for it is
// ever forwarded. A CONNECT to it is refused with where to go instead:
// the page is plain HTTP, since a client that does not trust sluice yet
// could not read it over TLS.
func (p *Page) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := decision.From(r.Context())
		if rec.Target.Host != Host {
			next.ServeHTTP(w, r)
			return
		}
		rec.Reason = "sluice's onboarding page"
		if r.Method == http.MethodConnect || rec.Scheme == decision.HTTPS {
			obs.WriteError(w, r, &obs.Error{Status: http.StatusForbidden, Msg: "onboarding page is plain HTTP", Host: rec.Target.String(),
				Detail: "open http://" + Host + "/ (not https): it serves sluice's CA to clients that do not trust it yet"})
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			obs.WriteError(w, r, &obs.Error{Status: http.StatusMethodNotAllowed, Msg: "method not allowed", Host: rec.Target.String(),
				Detail: "the onboarding page answers GET and HEAD"})
			return
		}
		file := func(body []byte, ctype, name string) {
			w.Header().Set("Content-Type", ctype)
			if name != "" {
				w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
			}
			w.Header().Set("Cache-Control", "no-store")
			w.Write(body)
		}
		switch r.URL.Path {
		case "/":
			file(p.html, "text/html; charset=utf-8", "")
		case "/ca.pem":
			file(p.pem, "application/x-pem-file", "sluice-ca.pem")
		case "/ca.crt", "/ca.der":
			// The DER form, which Android, iOS and Windows open as a CA certificate.
			file(p.der, "application/x-x509-ca-cert", "sluice-ca"+r.URL.Path[3:])
		case "/ca.p12":
			file(p.p12, "application/x-pkcs12", "sluice-ca.p12")
		default:
			obs.WriteError(w, r, &obs.Error{Status: http.StatusNotFound, Msg: "not found", Host: rec.Target.String(),
				Detail: "the onboarding page has /, /ca.pem, /ca.der, /ca.crt and /ca.p12"})
		}
	})
}

var page = template.Must(template.New("onboard").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Trust sluice's CA</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:14px ui-monospace,monospace;background:#f3f3f3}pre{padding:.6rem;overflow-x:auto}
h2{margin-top:2rem;border-bottom:1px solid #ddd}a.b{display:inline-block;margin:.2rem .6rem .2rem 0;padding:.4rem .8rem;border:1px solid #888;border-radius:4px;text-decoration:none}</style>
</head><body>
<h1>You are going through sluice</h1>
<p>sluice reads your HTTPS requests to the hosts it allows (to cache them, keep budgets and keys) and presents
certificates from its own CA. Your client must trust that CA once. Check that the fingerprint matches what
<code>sluice ca export | openssl x509 -noout -fingerprint -sha256</code> prints on the gateway.</p>
<p><b>{{.Subject}}</b>, valid until {{.NotAfter}}<br>SHA-256 <code>{{.Fingerprint}}</code></p>
<p><a class="b" id="pem" href="/ca.pem">PEM (Linux, Python, Node, curl)</a><a class="b" id="der" href="/ca.der">DER (Windows, Android, iOS)</a><a class="b" id="p12" href="/ca.p12">PKCS#12 (Java; password {{.Password}})</a></p>

<h2>On the gateway itself</h2>
<pre>sluice ca trust                                # the system store (Debian/Ubuntu, Alpine, RHEL/Fedora)
sluice ca trust --python /path/to/venv/bin/python   # that environment's certifi (requests, aiohttp, ccxt, freqtrade)
sluice ca trust --java                         # the Java runtime's cacerts
sluice ca trust --nss ~/.pki/nssdb             # Chromium; Firefox: its profile directory</pre>

<h2>Debian, Ubuntu, Alpine</h2>
<pre>curl -o /usr/local/share/ca-certificates/sluice-ca.crt --proxy "$HTTPS_PROXY" http://sluice.invalid/ca.pem
update-ca-certificates</pre>
<h2>RHEL, Fedora</h2>
<pre>curl -o /etc/pki/ca-trust/source/anchors/sluice-ca.crt --proxy "$HTTPS_PROXY" http://sluice.invalid/ca.pem
update-ca-trust extract</pre>
<h2>Python (requests, aiohttp, ccxt, freqtrade)</h2>
<p>They read certifi's bundle, not the system's. Point them at a bundle that holds the system roots and sluice's CA
(<code>sluice ca export --format bundle -o ca-bundle.pem</code> on the gateway):</p>
<pre>export REQUESTS_CA_BUNDLE=/path/to/ca-bundle.pem SSL_CERT_FILE=/path/to/ca-bundle.pem</pre>
<p>freqtrade: also <code>"ccxt_async_config": {"aiohttp_trust_env": true}</code>, and in transparent mode
<code>"cafile"</code> in <code>ccxt_async_config</code>.</p>
<h2>Node.js (ccxt)</h2>
<pre>export NODE_EXTRA_CA_CERTS=/path/to/sluice-ca.pem</pre>
<h2>Java</h2>
<pre>keytool -importcert -noprompt -cacerts -storepass changeit -alias sluice -file sluice-ca.pem</pre>
<h2>Go, curl, git</h2>
<pre>export SSL_CERT_FILE=/path/to/ca-bundle.pem CURL_CA_BUNDLE=/path/to/ca-bundle.pem GIT_SSL_CAINFO=/path/to/ca-bundle.pem</pre>
<h2>macOS</h2>
<pre>sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain sluice-ca.pem</pre>
<h2>Windows</h2>
<pre>certutil -addstore -f Root sluice-ca.der</pre>

<h2>The certificate</h2>
<pre id="cert">{{.PEM}}</pre>
</body></html>
`))
