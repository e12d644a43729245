package trust

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sluice/internal/testenv"
	"sluice/internal/testpki"
)

// server starts a TLS server whose certificate a new CA signed, and
// returns that CA as a Cert and the server's URL.
func server(t *testing.T) (*Cert, string) {
	ca := testpki.NewCA(t, "sluice trust test CA")
	srv := ca.Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("trusted")) }), "127.0.0.1")
	c, err := ParseCert(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c, srv.URL
}

// installTwice installs c into s twice and removes it twice: the first of
// each changes the store, the second finds nothing to do.
func installTwice(t *testing.T, s Store, c *Cert, trusted func() bool) {
	t.Helper()
	if trusted() {
		t.Fatalf("%s trusts the test CA before Install: the test proves nothing", s)
	}
	for i, want := range []bool{true, false} {
		changed, err := s.Install(c)
		if err != nil || changed != want {
			t.Fatalf("Install #%d into %s: changed %v, %v; want changed %v", i+1, s, changed, err, want)
		}
	}
	if !trusted() {
		t.Fatalf("after Install, %s does not trust the CA", s)
	}
	for i, want := range []bool{true, false} {
		changed, err := s.Remove(c)
		if err != nil || changed != want {
			t.Fatalf("Remove #%d from %s: changed %v, %v; want changed %v", i+1, s, changed, err, want)
		}
	}
	if trusted() {
		t.Fatalf("after Remove, %s still trusts the CA", s)
	}
}

// TestSystemStore installs a CA into this Debian machine's own store with
// its own update-ca-certificates, in a mount namespace whose copies of
// the store's directories hide the change from the rest of the machine;
// curl, reading the system bundle, trusts a server the CA signed only in
// between.
func TestSystemStore(t *testing.T) {
	if os.Getenv("SLUICE_TRUST_NAMESPACE") == "1" {
		systemStoreInside(t)
		return
	}
	testenv.RequireRoot(t, "installing into the system store (in a mount namespace)")
	unshare := testenv.RequireTool(t, "unshare", "util-linux")
	testenv.RequireTool(t, "update-ca-certificates", "ca-certificates")
	testenv.RequireTool(t, "curl")
	tmp := t.TempDir()
	// Each directory the update writes is replaced, in the namespace only,
	// by a copy.
	script := `set -e
i=0
for d in /etc/ssl/certs /usr/local/share/ca-certificates /etc/ca-certificates; do
  i=$((i+1)); mkdir -p "$TMP/$i"; cp -a "$d/." "$TMP/$i/"; mount --bind "$TMP/$i" "$d"
done
cp /etc/ca-certificates.conf "$TMP/conf"; mount --bind "$TMP/conf" /etc/ca-certificates.conf
exec "$0" -test.run '^TestSystemStore$' -test.v`
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c", script, os.Args[0])
	cmd.Env = append(os.Environ(), "SLUICE_TRUST_NAMESPACE=1", "TMP="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestSystemStore")) {
		t.Fatalf("in the mount namespace: %v\n%s", err, out)
	}
}

func systemStoreInside(t *testing.T) {
	c, url := server(t)
	s, err := FindSystem()
	if err != nil {
		t.Fatal(err)
	}
	if s.Anchors != "/usr/local/share/ca-certificates" {
		t.Fatalf("FindSystem on Debian: %+v", s)
	}
	installTwice(t, s, c, func() bool {
		out, err := exec.Command("curl", "-sS", "--max-time", "10", url).CombinedOutput()
		return err == nil && string(out) == "trusted"
	})
}

// TestCertifi installs a CA into a Python virtual environment's certifi
// bundle, which Python's ssl then verifies a server with; removing it
// leaves the bundle as it was, byte for byte. (PyPI is out of reach here,
// so the environment's certifi is written by the test: a package whose
// where() names the bundle beside it, as certifi's does.)
func TestCertifi(t *testing.T) {
	python := testenv.RequireTool(t, "python3")
	c, url := server(t)
	venv := filepath.Join(t.TempDir(), "venv")
	if out, err := exec.Command(python, "-m", "venv", "--without-pip", venv).CombinedOutput(); err != nil {
		if os.Getenv("SLUICE_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("python3 -m venv failed (SLUICE_REQUIRE_INTEGRATION=1): %v\n%s", err, out)
		}
		t.Skipf("skipping: python3 -m venv failed (apt-get install python3-venv): %v\n%s", err, out)
	}
	py := filepath.Join(venv, "bin", "python")
	site, err := exec.Command(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").Output()
	if err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(strings.TrimSpace(string(site)), "certifi")
	os.MkdirAll(pkg, 0o755)
	os.WriteFile(filepath.Join(pkg, "__init__.py"), []byte("import os\ndef where():\n    return os.path.join(os.path.dirname(__file__), 'cacert.pem')\n"), 0o644)
	original := []byte("# the environment's own roots\n")
	bundle := filepath.Join(pkg, "cacert.pem")
	os.WriteFile(bundle, original, 0o644)

	s, err := FindCertifi(py)
	if err != nil {
		t.Fatal(err)
	}
	if s.Bundle != bundle {
		t.Fatalf("FindCertifi: bundle %s, want %s", s.Bundle, bundle)
	}
	installTwice(t, s, c, func() bool {
		check := `import certifi, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=certifi.where())
print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10).read().decode())`
		out, err := exec.Command(py, "-c", check, url).CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "trusted"
	})
	if got, _ := os.ReadFile(bundle); !bytes.Equal(got, original) {
		t.Errorf("after Remove the bundle is\n%s\nwant it as it was:\n%s", got, original)
	}
	// A distribution's certifi that points at the system bundle is refused:
	// changing it would change the system store.
	if sys := "/usr/bin/python3"; fileExists(sys) {
		if out, err := exec.Command(sys, "-c", "import certifi; print(certifi.where())").Output(); err == nil && strings.HasPrefix(string(out), "/etc/ssl/") {
			if _, err := FindCertifi(sys); err == nil || !strings.Contains(err.Error(), "without --python") {
				t.Errorf("FindCertifi(%s), whose certifi is the system bundle: %v; want a refusal pointing at the system store", sys, err)
			}
		}
	}
}

func fileExists(path string) bool { _, err := os.Stat(path); return err == nil }

// TestJavaKeystore installs a CA into a keystore with the JDK's keytool.
func TestJavaKeystore(t *testing.T) {
	keytool := testenv.RequireTool(t, "keytool", "default-jre-headless")
	c, _ := server(t)
	store := filepath.Join(t.TempDir(), "cacerts.p12")
	// A keystore with one other entry, as a JDK's cacerts has many.
	other := testpki.NewCA(t, "another CA")
	otherPEM := filepath.Join(t.TempDir(), "other.pem")
	os.WriteFile(otherPEM, other.CertPEM, 0o644)
	if out, err := exec.Command(keytool, "-importcert", "-noprompt", "-alias", "other", "-file", otherPEM, "-keystore", store, "-storepass", "changeit").CombinedOutput(); err != nil {
		t.Fatalf("keytool: %v\n%s", err, out)
	}
	s, err := FindJava(store, "changeit")
	if err != nil {
		t.Fatal(err)
	}
	installTwice(t, s, c, func() bool {
		out, err := exec.Command(keytool, "-list", "-keystore", store, "-storepass", "changeit").CombinedOutput()
		return err == nil && bytes.Contains(out, []byte(c.Name()+", ")) && bytes.Contains(out, []byte("trustedCertEntry"))
	})
	if out, err := exec.Command(keytool, "-list", "-alias", "other", "-keystore", store, "-storepass", "changeit").CombinedOutput(); err != nil {
		t.Errorf("the keystore's other entry is gone: %v\n%s", err, out)
	}
}

// TestNSSDatabase installs a CA into an NSS database (Chromium's kind)
// as a trusted TLS authority, with NSS's certutil.
func TestNSSDatabase(t *testing.T) {
	certutil := testenv.RequireTool(t, "certutil", "libnss3-tools")
	c, _ := server(t)
	dir := t.TempDir()
	if out, err := exec.Command(certutil, "-N", "-d", "sql:"+dir, "--empty-password").CombinedOutput(); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, out)
	}
	s, err := FindNSS(dir)
	if err != nil {
		t.Fatal(err)
	}
	installTwice(t, s, c, func() bool {
		out, err := exec.Command(certutil, "-L", "-d", "sql:"+dir).CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, c.Name()) && strings.HasSuffix(strings.TrimSpace(line), "C,,") {
				return err == nil
			}
		}
		return false
	})
}
