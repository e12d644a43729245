package app

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// The real credentials, which only sluice and the test exchange hold.
const (
	binanceKey    = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
	binanceSecret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
	bybitKey      = "XXXXbybitREALkeyXXXX"
	bybitSecret   = "YYYYbybitREALsecretYYYYzzzz"
	krakenKey     = "krakenREALkeyKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK"
	// base64, as Kraken hands out secrets
	krakenSecret = "a3Jha2VuLXJlYWwtc2VjcmV0LW9mLXNvbWUtbGVuZ3RoLWZvci10aGUtdGVzdA=="
	// What the bots hold: a placeholder key, and a secret they sign with.
	placeholderSecret = "not-a-secret"
)

func hmacHex256(secret, msg string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

func krakenSign(secretB64, path, nonce, body string) string {
	secret, _ := base64.StdEncoding.DecodeString(secretB64)
	inner := sha256.Sum256([]byte(nonce + body))
	m := hmac.New(sha512.New, secret)
	m.Write([]byte(path))
	m.Write(inner[:])
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// testExchange verifies requests the way Binance, Bybit and Kraken
// document, with the real secrets: 401 for a wrong key or signature.
func testExchange(binanceCreds *atomic.Pointer[[2]string]) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fail := func(why string) {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"error":%q}`, why)
		}
		switch {
		case strings.HasPrefix(r.Host, "api.binance.com"):
			creds := binanceCreds.Load()
			if r.Header.Get("X-MBX-APIKEY") != creds[0] {
				fail("API-key format invalid.")
				return
			}
			q, b := r.URL.RawQuery, string(body)
			sig := ""
			for _, part := range []*string{&q, &b} {
				if i := strings.Index(*part, "signature="); i >= 0 {
					sig = (*part)[i+len("signature="):]
					*part = strings.TrimSuffix((*part)[:i], "&")
				}
			}
			if sig != "" && sig != hmacHex256(creds[1], q+b) {
				fail("Signature for this request is not valid.")
				return
			}
		case strings.HasPrefix(r.Host, "api.bybit.com"):
			payload := string(body)
			if r.Method == http.MethodGet {
				payload = r.URL.RawQuery
			}
			want := hmacHex256(bybitSecret, r.Header.Get("X-BAPI-TIMESTAMP")+bybitKey+r.Header.Get("X-BAPI-RECV-WINDOW")+payload)
			if r.Header.Get("X-BAPI-API-KEY") != bybitKey || r.Header.Get("X-BAPI-SIGN") != want {
				fmt.Fprint(w, `{"retCode":10004,"retMsg":"error sign!","result":{}}`)
				return
			}
			fmt.Fprint(w, `{"retCode":0,"retMsg":"OK","result":{"orderId":"1"}}`)
			return
		case strings.HasPrefix(r.Host, "api.kraken.com"):
			form, _ := url.ParseQuery(string(body))
			if r.Header.Get("API-Key") != krakenKey || r.Header.Get("API-Sign") != krakenSign(krakenSecret, r.URL.Path, form.Get("nonce"), string(body)) {
				fail("EAPI:Invalid key")
				return
			}
		default:
			fail("unknown host " + r.Host)
			return
		}
		fmt.Fprintf(w, `{"ok":true,"path":%q}`, r.URL.Path)
	})
}

// TestKeyVault: bots that hold only a placeholder key reach three test
// exchanges that check every signature with the real secret; sluice signs
// for them. A bot without credentials gets 407, one granted only read
// cannot place an order, a real key sent by a bot is refused, and no
// secret appears in any log line or file under the data dir.
func TestKeyVault(t *testing.T) {
	upCA := testpki.NewCA(t, "exchange CA")
	var binanceCreds atomic.Pointer[[2]string]
	binanceCreds.Store(&[2]string{binanceKey, binanceSecret})
	srv := upCA.Upstream(t, testExchange(&binanceCreds), "api.binance.com", "api.bybit.com", "api.kraken.com")
	caPath := upCA.WritePEM(t, t.TempDir())
	secrets := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(secrets, name)
		if err := os.WriteFile(p, []byte(content+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("SLUICE_TEST_KRAKEN_SECRET", krakenSecret)
	sum := sha256.Sum256([]byte("bot2-password"))
	host := func(name, profile string) string {
		return fmt.Sprintf("  %s: {profile: %s, upstream_ca: %s, connect_to: %s, allow_private: true}\n", name, profile, caPath, srv.Listener.Addr())
	}
	cfg := baseConfig(host("api.binance.com", "binance")+host("api.bybit.com", "bybit")+host("api.kraken.com", "kraken")) + fmt.Sprintf(`keys:
  binance-main: {exchange: binance, key_file: %s, secret_file: %s}
  bybit-main: {exchange: bybit, key_file: %s, secret_file: %s}
  kraken-main: {exchange: kraken, key_file: %s, secret_env: SLUICE_TEST_KRAKEN_SECRET}
clients:
  bot1:
    password_file: %s
    hosts: [api.binance.com, api.bybit.com, api.kraken.com]
    grants: [read, trade]
    keys: {api.binance.com: binance-main, api.bybit.com: bybit-main, api.kraken.com: kraken-main}
  bot2:
    password_file: %s
    hosts: [api.binance.com]
    grants: [read]
    keys: {api.binance.com: binance-main}
`, write("binance.key", binanceKey, 0o600), write("binance.secret", binanceSecret, 0o600),
		write("bybit.key", bybitKey, 0o600), write("bybit.secret", bybitSecret, 0o400),
		write("kraken.key", krakenKey, 0o600), write("bot1.pass", "bot1-password", 0o600),
		write("bot2.pass", "sha256:"+hex.EncodeToString(sum[:]), 0o600))
	r := startRun(t, cfg)
	pem, err := os.ReadFile(filepath.Join(r.dir, "data", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	bot := func(user *url.Userinfo) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: r.addrs["proxy"], User: user}),
			TLSClientConfig: &tls.Config{RootCAs: pool}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 20 * time.Second}
	}
	bot1, bot2 := bot(url.UserPassword("bot1", "bot1-password")), bot(url.UserPassword("bot2", "bot2-password"))
	do := func(c *http.Client, req *http.Request) (int, string) {
		t.Helper()
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	// Binance, as ccxt signs: the query (or form body) and its HMAC with the bot's secret.
	binanceReq := func(method, path, params, apiKey string) *http.Request {
		signed := params + "&signature=" + hmacHex256(placeholderSecret, params)
		var req *http.Request
		if method == http.MethodGet {
			req, _ = http.NewRequest(method, "https://api.binance.com"+path+"?"+signed, nil)
		} else {
			req, _ = http.NewRequest(method, "https://api.binance.com"+path, strings.NewReader(signed))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		req.Header.Set("X-MBX-APIKEY", apiKey)
		return req
	}
	order := "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=20000&timestamp=" + ts

	// Without credentials, or with a wrong password: 407 and a challenge.
	for name, auth := range map[string]string{"no credentials": "", "a wrong password": "Basic " + base64.StdEncoding.EncodeToString([]byte("bot1:guess"))} {
		conn, err := net.Dial("tcp", r.addrs["proxy"])
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodConnect, "", nil)
		req.Host, req.URL = "api.binance.com:443", &url.URL{Host: "api.binance.com:443"}
		if auth != "" {
			req.Header.Set("Proxy-Authorization", auth)
		}
		req.Write(conn)
		resp, err := http.ReadResponse(bufio.NewReader(conn), req)
		conn.Close()
		if err != nil || resp.StatusCode != http.StatusProxyAuthRequired || resp.Header.Get("Proxy-Authenticate") != `Basic realm="sluice"` {
			t.Errorf("a bot with %s: %v %v; want 407 with a Basic challenge", name, resp, err)
		}
	}

	// bot1 places orders on each exchange; sluice signs with the real secrets.
	if code, body := do(bot1, binanceReq(http.MethodPost, "/api/v3/order", order, "sluice")); code != 200 {
		t.Errorf("bot1's Binance order: %d %s", code, body)
	}
	if code, body := do(bot1, binanceReq(http.MethodGet, "/api/v3/account", "timestamp="+ts, "sluice")); code != 200 {
		t.Errorf("bot1's Binance account: %d %s", code, body)
	}
	bybitBody := `{"category":"spot","symbol":"BTCUSDT","side":"Buy","orderType":"Market","qty":"0.001"}`
	req, _ := http.NewRequest(http.MethodPost, "https://api.bybit.com/v5/order/create", strings.NewReader(bybitBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-BAPI-API-KEY", "sluice")
	req.Header.Set("X-BAPI-TIMESTAMP", ts)
	req.Header.Set("X-BAPI-RECV-WINDOW", "5000")
	req.Header.Set("X-BAPI-SIGN", hmacHex256(placeholderSecret, ts+"sluice5000"+bybitBody))
	if code, body := do(bot1, req); code != 200 {
		t.Errorf("bot1's Bybit order: %d %s", code, body)
	}
	krakenBody := "nonce=" + ts + "&ordertype=limit&type=buy&volume=0.001&pair=XBTUSD&price=20000"
	req, _ = http.NewRequest(http.MethodPost, "https://api.kraken.com/0/private/AddOrder", strings.NewReader(krakenBody))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("API-Key", "sluice")
	req.Header.Set("API-Sign", krakenSign(base64.StdEncoding.EncodeToString([]byte(placeholderSecret)), "/0/private/AddOrder", ts, krakenBody))
	if code, body := do(bot1, req); code != 200 {
		t.Errorf("bot1's Kraken order: %d %s", code, body)
	}

	// What bots may not do.
	for _, tc := range []struct {
		what string
		c    *http.Client
		req  *http.Request
		want string
	}{
		{"bot2 (read) placing an order", bot2, binanceReq(http.MethodPost, "/api/v3/order", order, "sluice"), "endpoint group not granted"},
		{"bot1 withdrawing", bot1, binanceReq(http.MethodPost, "/sapi/v1/capital/withdraw/apply", "coin=BTC&address=x&amount=1&timestamp="+ts, "sluice"), `"withdraw\" group`},
		{"bot1 sending a real key of its own", bot1, binanceReq(http.MethodGet, "/api/v3/account", "timestamp="+ts, "someRealLookingKey0123456789"), "real key sent"},
	} {
		code, body := do(tc.c, tc.req)
		if code != http.StatusForbidden || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s; want 403 with %q", tc.what, code, body, tc.want)
		}
	}
	if code, body := do(bot2, binanceReq(http.MethodGet, "/api/v3/account", "timestamp="+ts, "sluice")); code != 200 {
		t.Errorf("bot2 reading its account: %d %s", code, body)
	}
	req, _ = http.NewRequest(http.MethodGet, "https://api.bybit.com/v5/market/time", nil)
	if code, body := do(bot2, req); code != 0 || !strings.Contains(body, "host not granted") {
		t.Errorf("bot2 to a host it is not granted: %d %s; want its CONNECT refused 403", code, body)
	}

	t.Run("ccxt", func(t *testing.T) { ccxtThroughVault(t, r) })

	// A ban by name holds the bot, not the address it shares with others.
	token := strings.TrimSpace(readFile(t, filepath.Join(r.dir, "data", "admin.token")))
	if code, body := adminDo(t, r, http.MethodPost, "/bans", token, []byte(`{"client":"client:bot2","duration":"1h","reason":"test"}`)); code != 200 {
		t.Fatalf("ban of client:bot2: %d %s", code, body)
	}
	if code, body := do(bot2, binanceReq(http.MethodGet, "/api/v3/account", "timestamp="+ts, "sluice")); code != http.StatusForbidden || !strings.Contains(body, "client banned") {
		t.Errorf("bot2 banned by name: %d %s", code, body)
	}
	if code, body := do(bot1, binanceReq(http.MethodGet, "/api/v3/account", "timestamp="+ts, "sluice")); code != 200 {
		t.Errorf("bot1, from the same address as banned bot2: %d %s", code, body)
	}

	// Rotating the key: new files and a reload; the bots change nothing.
	const rotatedKey, rotatedSecret = "rotatedKEY0123456789rotatedKEY0123456789", "rotatedSECRET0123456789rotatedSECRET"
	write("binance.key", rotatedKey, 0o600)
	write("binance.secret", rotatedSecret, 0o600)
	binanceCreds.Store(&[2]string{rotatedKey, rotatedSecret})
	if code, body := adminDo(t, r, http.MethodPut, "/config?dir="+url.QueryEscape(r.dir), token, []byte(readFile(t, r.cfg))); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if code, body := do(bot1, binanceReq(http.MethodGet, "/api/v3/account", "timestamp="+ts, "sluice")); code != 200 {
		t.Errorf("bot1 after the key was rotated: %d %s", code, body)
	}

	// The audit trail, and no secret anywhere.
	// Each audit line is written once its response is done, which its client may see first.
	testenv.WaitFor(t, 5*time.Second, "an audit line for each of the 5 signed requests", func() bool {
		return strings.Count(r.log(), `"msg":"audit: signed request"`) >= 5
	})
	logs := r.log() + r.stderr.String()
	var audit int
	for l := range strings.Lines(logs) {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "audit: signed request" {
			audit++
			if m["client"] == "bot1" && m["key"] == "binance-main" && m["path"] == "/api/v3/order" && m["status"] != float64(200) {
				t.Errorf("audit line of bot1's order: %s", l)
			}
		}
	}
	if audit < 5 {
		t.Errorf("%d audit lines for at least 5 signed requests", audit)
	}
	secretsOf := []string{binanceKey, binanceSecret, rotatedKey, rotatedSecret, bybitKey, bybitSecret, krakenKey, krakenSecret, "bot1-password", "bot2-password"}
	for _, s := range secretsOf {
		if strings.Contains(logs, s) {
			t.Errorf("the log holds a secret (%.6s...)", s)
		}
	}
	filepath.WalkDir(filepath.Join(r.dir, "data"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		for _, s := range secretsOf {
			if strings.Contains(string(b), s) {
				t.Errorf("%s holds a secret (%.6s...)", p, s)
			}
		}
		return nil
	})
	areq, _ := http.NewRequest(http.MethodGet, "http://"+r.addrs["admin"]+"/config", nil)
	areq.Header.Set("Authorization", "Bearer "+token)
	if code, body := do(http.DefaultClient, areq); code != 200 || strings.Contains(body, binanceSecret) || !strings.Contains(body, "binance-main") {
		t.Errorf("GET /config: %d, or it holds a secret:\n%s", code, body)
	}
	mb := r.metrics(t)
	if !regexp.MustCompile(`sluice_vault_signed_total\{key="binance-main",outcome="signed"\} [3-9]`).MatchString(mb) || !strings.Contains(mb, `sluice_client_requests_total{client="bot2"}`) {
		t.Errorf("vault metrics:\n%s", grepLines(mb, "sluice_vault_")+grepLines(mb, "sluice_client_requests"))
	}
}

// TestClientCertificate: a client certificate that sluice clients cert
// minted names its client on the HTTPS-proxy listener, which then needs
// no password; without one the client is unknown.
func TestClientCertificate(t *testing.T) {
	up := testpki.NewCA(t, "exchange CA")
	srv := up.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.test")
	cfg := strings.Replace(baseConfig(fmt.Sprintf("  api.test: {upstream_ca: %s, connect_to: %s, allow_private: true}\n", up.WritePEM(t, t.TempDir()), srv.Listener.Addr())),
		"admin: 127.0.0.1:0}", "admin: 127.0.0.1:0, proxy_tls: 127.0.0.1:0}", 1) +
		"clients:\n  bot3: {certificate: true, hosts: [api.test], grants: [read]}\n"
	r := startRun(t, cfg)
	certDir := t.TempDir()
	var out strings.Builder
	if err := Run(t.Context(), []string{"clients", "cert", "bot3", "-c", r.cfg, "-o", certDir}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(certDir, "bot3.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bot3.key: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	if err := Run(t.Context(), []string{"clients", "cert", "nobody", "-c", r.cfg, "-o", certDir}, io.Discard, io.Discard); err == nil {
		t.Error("a certificate for a client the config does not name: no error")
	}
	pem, _ := os.ReadFile(filepath.Join(r.dir, "data", "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	get := func(withCert bool) (int, error) {
		tc := &tls.Config{RootCAs: pool}
		if withCert {
			cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "bot3.pem"), filepath.Join(certDir, "bot3.key"))
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "https", Host: r.addrs["proxy_tls"]}), TLSClientConfig: tc}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://api.test/x")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get(true); code != 200 {
		t.Errorf("bot3 with its certificate: %d %v", code, err)
	}
	if _, err := get(false); err == nil || !strings.Contains(err.Error(), "unknown client") {
		t.Errorf("without a certificate: %v; want the CONNECT refused as an unknown client", err)
	}
}

// TestCertificateAskedOnlyWhileUsable: the HTTPS-proxy listener asks for a
// client certificate only while some client may present one, so that no
// client of a config without one is asked (a browser would prompt its
// user to pick one); a reload that adds one makes the next handshake ask.
func TestCertificateAskedOnlyWhileUsable(t *testing.T) {
	cfg := strings.Replace(baseConfig("  api.test: {connect_to: 127.0.0.1:1, allow_private: true}\n"),
		"admin: 127.0.0.1:0}", "admin: 127.0.0.1:0, proxy_tls: 127.0.0.1:0}", 1)
	r := startRun(t, cfg)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(readFile(t, filepath.Join(r.dir, "data", "ca.pem"))))
	asked := func() bool {
		var asked bool
		conn, err := tls.Dial("tcp", r.addrs["proxy_tls"], &tls.Config{RootCAs: pool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked = true
				return &tls.Certificate{}, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		return asked
	}
	if asked() {
		t.Error("no client may present a certificate, yet the handshake asked for one")
	}
	token := strings.TrimSpace(readFile(t, filepath.Join(r.dir, "data", "admin.token")))
	withCerts := cfg + "clients:\n  bot3: {certificate: true, hosts: [api.test]}\n"
	if code, body := adminDo(t, r, http.MethodPut, "/config?dir="+url.QueryEscape(r.dir), token, []byte(withCerts)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if !asked() {
		t.Error("after a reload named a certificate client, the handshake did not ask for a certificate")
	}
}

// ccxtScript places an order on each exchange with ccxt's own signing
// code (its implicit API), holding only a placeholder key and secret.
const ccxtScript = `
const ccxt = require("ccxt");
const proxy = process.env.SLUICE_TEST_PROXY;
(async () => {
  const opts = {apiKey: "sluice", httpsProxy: proxy, timeout: 10000};
  const binance = new ccxt.binance({...opts, secret: "not-a-secret"});
  await binance.privatePostOrder({symbol: "BTCUSDT", side: "BUY", type: "LIMIT", timeInForce: "GTC", quantity: "0.001", price: "20000"});
  await binance.privateGetAccount();
  const bybit = new ccxt.bybit({...opts, secret: "not-a-secret"});
  await bybit.privatePostV5OrderCreate({category: "spot", symbol: "BTCUSDT", side: "Buy", orderType: "Market", qty: "0.001"});
  const kraken = new ccxt.kraken({...opts, secret: "bm90LWEtc2VjcmV0"});
  await kraken.privatePostAddOrder({pair: "XBTUSD", type: "buy", ordertype: "limit", price: "20000", volume: "0.001"});
  console.log("ok");
})().catch(e => { console.error(String(e)); process.exit(1); });
`

// ccxtThroughVault runs ccxtScript through r as bot1: each exchange
// checks the real signature, which only sluice could make.
func ccxtThroughVault(t *testing.T, r *running) {
	node := testenv.RequireTool(t, "node", "nodejs")
	modules := testenv.RequireNodeModule(t, "ccxt")
	cmd := exec.Command(node, "-e", ccxtScript)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "NODE_EXTRA_CA_CERTS="+filepath.Join(r.dir, "data", "ca.pem"),
		"SLUICE_TEST_PROXY=http://bot1:bot1-password@"+r.addrs["proxy"], "HTTPS_PROXY=", "https_proxy=", "NO_PROXY=")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("ccxt with placeholder keys through sluice: %v\n%s", err, out)
	}
}

// TestTransparentClientCertificate: on the transparent TLS listener a
// client that cannot send proxy credentials names itself with a client
// certificate in the handshake sluice terminates; without one (or on a
// tunneled host, where sluice sees no handshake) it is refused.
func TestTransparentClientCertificate(t *testing.T) {
	front := transparentAddress(t)
	up := testpki.NewCA(t, "exchange CA")
	srv := up.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.test", "tunnel.test")
	caPath := up.WritePEM(t, t.TempDir())
	r := startRun(t, fmt.Sprintf(`listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0, transparent_tls: %q}
data_dir: data
hosts:
  api.test: {upstream_ca: %s, connect_to: %s, allow_private: true}
  tunnel.test: {mode: tunnel, connect_to: %s, allow_private: true}
clients:
  bot3: {certificate: true, hosts: [api.test, tunnel.test]}
`, front, caPath, srv.Listener.Addr(), srv.Listener.Addr()))
	certDir := t.TempDir()
	if err := Run(t.Context(), []string{"clients", "cert", "bot3", "-c", r.cfg, "-o", certDir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "bot3.pem"), filepath.Join(certDir, "bot3.key"))
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(filepath.Join(r.dir, "data", "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	upPEM, _ := os.ReadFile(caPath)
	pool.AppendCertsFromPEM(upPEM) // so that a tunnel to tunnel.test would succeed, if sluice let it through
	get := func(host string, certs []tls.Certificate) (string, error) {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", front)
			},
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs},
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + host + "/x")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b), nil
	}
	if got, err := get("api.test", []tls.Certificate{cert}); got != "200 ok" {
		t.Errorf("bot3 with its certificate, transparently: %q %v", got, err)
	}
	if got, err := get("api.test", nil); !strings.HasPrefix(got, "403 ") || !strings.Contains(got, "unknown client") {
		t.Errorf("without a certificate: %q %v; want 403 unknown client", got, err)
	}
	if got, err := get("tunnel.test", []tls.Certificate{cert}); err == nil {
		t.Errorf("a tunneled host, where no certificate can name the client: %q; want the connection refused", got)
	}
}

// TestAuthFailuresBan: an address whose proxy credentials keep failing is
// banned (bans.auth_failures), even once it sends the right ones.
func TestAuthFailuresBan(t *testing.T) {
	up := testpki.NewCA(t, "exchange CA")
	srv := up.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), "api.test")
	pass := filepath.Join(t.TempDir(), "bot.pass")
	os.WriteFile(pass, []byte("right"), 0o600)
	r := startRun(t, baseConfig(fmt.Sprintf("  api.test: {upstream_ca: %s, connect_to: %s, allow_private: true}\n", up.WritePEM(t, t.TempDir()), srv.Listener.Addr()))+
		fmt.Sprintf("bans: {auth_failures: {violations: 3, window: 1m, duration: 1h}}\nclients:\n  bot: {password_file: %s, hosts: [api.test]}\n", pass))
	connect := func(password string) string {
		conn, err := net.Dial("tcp", r.addrs["proxy"])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\nProxy-Authorization: Basic %s\r\n\r\n", base64.StdEncoding.EncodeToString([]byte("bot:"+password)))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Status
	}
	if got := connect("right"); !strings.HasPrefix(got, "200") {
		t.Fatalf("the right password: %s", got)
	}
	for i := range 3 {
		if got := connect("guess"); !strings.HasPrefix(got, "407") {
			t.Fatalf("wrong password %d: %s, want 407", i+1, got)
		}
	}
	if got := connect("right"); !strings.HasPrefix(got, "403") || !strings.Contains(got, "banned") {
		t.Errorf("after 3 failures within a minute: %s; want the address banned", got)
	}
}
