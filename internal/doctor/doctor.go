// Package doctor checks, from a client's shell, whether the clients found
// there go through sluice with a verified certificate: the proxy and CA
// variables, each CA file, and one real request per runtime (curl, Python
// requests, aiohttp as ccxt's async client opens it, Node's fetch), each
// failure with the line that fixes it.
package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Options are what the checks need.
type Options struct {
	URL    string // an allowed HTTPS URL to request through sluice
	Python string // the Python interpreter of the bots' environment
	// CA is sluice's CA certificate (PEM), to look for in CA files; nil:
	// those checks are skipped.
	CA []byte
	// Bundle is the file sluice env points clients at, and ProxyURL the
	// proxy listener's address, for the fixes.
	Bundle, ProxyURL string
	Env              func(string) string
}

// Result is one check.
type Result struct {
	Check  string `json:"check"`
	Status string `json:"status"` // ok, fail, warn, skip
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// caVars are the variables that point a runtime at a CA file.
var caVars = []struct{ name, reader string }{
	{"SSL_CERT_FILE", "Go, OpenSSL, Python's ssl"},
	{"REQUESTS_CA_BUNDLE", "Python requests"},
	{"CURL_CA_BUNDLE", "curl"},
	{"NODE_EXTRA_CA_CERTS", "Node.js"},
}

// Run runs every check, in order.
func Run(ctx context.Context, o Options) []Result {
	if o.Env == nil {
		o.Env = os.Getenv
	}
	var out []Result
	proxy := firstSet(o.Env, "HTTPS_PROXY", "https_proxy")
	if proxy == "" {
		out = append(out, Result{"HTTPS_PROXY", "fail", "not set: clients that read it go straight to the internet", `eval "$(sluice env)"`})
	} else {
		out = append(out, Result{"HTTPS_PROXY", "ok", proxy, ""})
	}
	if np := firstSet(o.Env, "NO_PROXY", "no_proxy"); np == "*" {
		out = append(out, Result{"NO_PROXY", "fail", "* sends every host around the proxy", "unset NO_PROXY no_proxy"})
	}
	for _, v := range caVars {
		out = append(out, caFile(v.name, v.reader, o))
	}
	for _, p := range probes(o) {
		out = append(out, p.run(ctx, o))
	}
	return out
}

func firstSet(env func(string) string, names ...string) string {
	for _, n := range names {
		if v := env(n); v != "" {
			return v
		}
	}
	return ""
}

// caFile checks that a CA variable names a file that holds sluice's CA.
func caFile(name, reader string, o Options) Result {
	path := o.Env(name)
	fix := fmt.Sprintf("export %s=%s", name, o.Bundle)
	if name == "NODE_EXTRA_CA_CERTS" || o.Bundle == "" {
		fix = `eval "$(sluice env)"`
	}
	if path == "" {
		return Result{name, "warn", "not set (read by " + reader + ")", fix}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Result{name, "fail", err.Error(), fix}
	}
	if o.CA == nil {
		return Result{name, "ok", path + " (sluice's CA not known here: not looked for)", ""}
	}
	if !holds(data, o.CA) {
		return Result{name, "fail", path + " does not hold sluice's CA", fix}
	}
	return Result{name, "ok", path + " holds sluice's CA", ""}
}

// holds reports whether a PEM bundle holds the certificate caPEM.
func holds(bundle, caPEM []byte) bool {
	want, _ := pem.Decode(caPEM)
	if want == nil {
		return false
	}
	for rest := bundle; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return false
		}
		if bytes.Equal(b.Bytes, want.Bytes) {
			return true
		}
	}
}

// probe is one runtime's request through sluice: a program that prints
// {"status","via"} or {"error"} or {"missing"} as JSON.
type probe struct {
	name    string
	cmd     []string // the last argument is the URL
	version []string // prints the runtime's version ("" : none)
	// untrusted and bypassing are the fixes when the runtime does not
	// trust sluice's CA, or does not use the proxy.
	untrusted, bypassing string
}

const pythonRequests = `import json, sys
try:
    import requests
except ImportError as e:
    print(json.dumps({"missing": e.name})); sys.exit()
try:
    r = requests.get(sys.argv[1], timeout=10)
    print(json.dumps({"status": r.status_code, "via": r.headers.get("Via", ""), "version": requests.__version__}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
`

// pythonAiohttp opens aiohttp as ccxt.async_support does: an SSL context
// from certifi's bundle (ccxt's cafile default), trust_env from
// aiohttp_trust_env (here: true, what freqtrade must be told).
const pythonAiohttp = `import asyncio, json, ssl, sys
try:
    import aiohttp, certifi
except ImportError as e:
    print(json.dumps({"missing": e.name})); sys.exit()
async def main():
    ctx = ssl.create_default_context(cafile=certifi.where())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), trust_env=True) as s:
        async with s.get(sys.argv[1], timeout=aiohttp.ClientTimeout(total=10)) as r:
            return {"status": r.status, "via": r.headers.get("Via", ""), "version": aiohttp.__version__ + ", certifi " + certifi.where()}
try:
    print(json.dumps(asyncio.run(main())))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
`

const nodeFetch = `fetch(process.argv[1]).then(r => console.log(JSON.stringify({status: r.status, via: r.headers.get('via') || '', version: process.version})))
  .catch(e => console.log(JSON.stringify({error: String(e.cause || e)})))`

func probes(o Options) []probe {
	bundle := o.Bundle
	if bundle == "" {
		bundle = "the bundle sluice env names"
	}
	setProxy := "export HTTPS_PROXY=" + o.ProxyURL + " (sluice env prints it)"
	return []probe{
		{"curl", []string{"curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10", o.URL}, []string{"curl", "--version"},
			"export CURL_CA_BUNDLE=" + bundle, setProxy},
		{"Python requests", []string{o.Python, "-c", pythonRequests, o.URL}, nil,
			"export REQUESTS_CA_BUNDLE=" + bundle, setProxy},
		{"aiohttp as ccxt.async_support (freqtrade) opens it", []string{o.Python, "-c", pythonAiohttp, o.URL}, nil,
			`ccxt reads certifi's bundle: sluice ca trust --python ` + o.Python + `, or "ccxt_async_config": {"cafile": "` + bundle + `"}`,
			`"ccxt_async_config": {"aiohttp_trust_env": true} with HTTPS_PROXY set`},
		{"Node.js fetch", []string{"node", "-e", nodeFetch, o.URL}, nil,
			"export NODE_EXTRA_CA_CERTS=" + bundle,
			"export NODE_USE_ENV_PROXY=1 (Node 22.21+ or 24.5+; older: undici's EnvHttpProxyAgent); ccxt for Node also needs httpsProxy in its options"},
	}
}

// run makes the probe's request and judges it.
func (p probe) run(ctx context.Context, o Options) Result {
	if _, err := exec.LookPath(p.cmd[0]); err != nil {
		return Result{p.name, "skip", p.cmd[0] + " is not installed", ""}
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.cmd[0], p.cmd[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var got struct {
		Status  int    `json:"status"`
		Via     string `json:"via"`
		Error   string `json:"error"`
		Missing string `json:"missing"`
		Version string `json:"version"`
	}
	if p.cmd[0] == "curl" {
		// curl prints the headers; its errors go to stderr.
		got.Via, got.Status = headerOf(stdout.String(), "Via"), statusOf(stdout.String())
		if err != nil {
			got.Error = strings.TrimSpace(stderr.String())
		}
	} else if jerr := json.Unmarshal(bytes.TrimSpace(lastLine(stdout.Bytes())), &got); jerr != nil {
		return Result{p.name, "fail", fmt.Sprintf("the probe did not run: %v %s", err, strings.TrimSpace(stderr.String())), ""}
	}
	switch {
	case got.Missing != "":
		return Result{p.name, "skip", "module " + got.Missing + " is not installed for " + o.Python, ""}
	case got.Error != "" && resolvedItself(got.Error):
		return Result{p.name, "fail", "it looked the host up itself, so it bypasses sluice: " + got.Error, p.bypassing}
	case got.Error != "" && isCertError(got.Error):
		return Result{p.name, "fail", "does not trust sluice's CA: " + got.Error, p.untrusted}
	case got.Error != "" && strings.Contains(got.Error, "403"):
		return Result{p.name, "fail", "sluice refused the request: " + got.Error, "check the URL's host with sluice why HOST, or give an allowed URL with --url"}
	case got.Error != "":
		return Result{p.name, "fail", got.Error, "is sluice running, and HTTPS_PROXY its address? (sluice health)"}
	case !strings.Contains(got.Via, "sluice"):
		return Result{p.name, "fail", fmt.Sprintf("answered %d without sluice's Via header: it bypasses sluice", got.Status), p.bypassing}
	}
	detail := fmt.Sprintf("%d through sluice, certificate verified", got.Status)
	if got.Version != "" {
		detail += " (" + got.Version + ")"
	}
	return Result{p.name, "ok", detail, ""}
}

func lastLine(b []byte) []byte {
	b = bytes.TrimRight(b, "\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

// resolvedItself reports whether a client's error says it resolved the
// target's name itself: a client that uses the proxy never does.
func resolvedItself(s string) bool {
	for _, w := range []string{"Could not resolve host", "ENOTFOUND", "EAI_AGAIN", "getaddrinfo", "Name or service not known", "nodename nor servname", "Temporary failure in name resolution", "NameResolutionError"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// isCertError reports whether a client's error is a failed certificate check.
func isCertError(s string) bool {
	s = strings.ToLower(s)
	for _, w := range []string{"certificate", "self signed", "self-signed", "unable to get local issuer", "ssl_error", "cert_"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// headerOf is the last value of header name in curl's dump of the headers
// (the proxy's CONNECT answer comes first).
func headerOf(dump, name string) string {
	v := ""
	for _, l := range strings.Split(dump, "\n") {
		if k, val, ok := strings.Cut(l, ":"); ok && strings.EqualFold(strings.TrimSpace(k), name) {
			v = strings.TrimSpace(val)
		}
	}
	return v
}

// statusOf is the last status code in curl's dump of the headers.
func statusOf(dump string) int {
	code := 0
	for _, l := range strings.Split(dump, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "HTTP/") {
			fmt.Sscan(f[1], &code)
		}
	}
	return code
}

// Write prints the results for people, each failure with its fix.
func Write(w io.Writer, results []Result) {
	for _, r := range results {
		fmt.Fprintf(w, "%-4s  %s: %s\n", strings.ToUpper(r.Status), r.Check, r.Detail)
		if r.Fix != "" && r.Status != "ok" {
			fmt.Fprintf(w, "      fix: %s\n", r.Fix)
		}
	}
}
