package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sluice/internal/testenv"
)

// opensslCA makes a CA the way the old stack's easy-rsa does, with
// openssl: an RSA key and a self-signed CA certificate. extra are more
// openssl req arguments.
func opensslCA(t *testing.T, openssl, dir, name string, extra ...string) (cert, key string) {
	t.Helper()
	cert, key = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	args := append([]string{"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=" + name}, extra...)
	if out, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %v: %v\n%s", args, err, out)
	}
	return cert, key
}

// TestCAImport: an existing RSA CA made by openssl becomes sluice's, and
// clients that trust only it get through sluice; what is not a usable CA
// is refused with the reason, and a CA already there is replaced only
// with --force, kept beside.
func TestCAImport(t *testing.T) {
	openssl := testenv.RequireTool(t, "openssl")
	src := t.TempDir()
	dir := t.TempDir()
	hosts := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "through") }), "a.test")
	cfg := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(cfg, []byte(baseConfig(hosts)), 0o644)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Run(context.Background(), append([]string{"ca", "import", "-c", cfg}, args...), &out, io.Discard)
		return out.String(), err
	}

	leafCert, leafKey := opensslCA(t, openssl, src, "not-a-ca", "-addext", "basicConstraints=critical,CA:FALSE")
	if _, err := run(leafCert, leafKey); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("import of a certificate that is not a CA: %v", err)
	}
	caCert, caKey := opensslCA(t, openssl, src, "Easy-RSA CA")
	encrypted := filepath.Join(src, "encrypted.key")
	if out, err := exec.Command(openssl, "pkey", "-in", caKey, "-aes256", "-passout", "pass:secret", "-out", encrypted).CombinedOutput(); err != nil {
		t.Fatalf("openssl pkey: %v\n%s", err, out)
	}
	if _, err := run(caCert, encrypted); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Errorf("import of an encrypted key: %v, want it named encrypted", err)
	}
	otherCert, otherKey := opensslCA(t, openssl, src, "other CA")
	if _, err := run(caCert, otherKey); err == nil {
		t.Error("import of a key that is not the certificate's accepted")
	}

	if out, err := run(caCert, caKey); err != nil || !strings.Contains(out, "imported") {
		t.Fatalf("ca import: %q, %v", out, err)
	}
	if out, err := run(caCert, caKey); err != nil || !strings.Contains(out, "already") {
		t.Errorf("ca import of the same CA again: %q, %v; want it left as it is", out, err)
	}
	if _, err := run(otherCert, otherKey); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("ca import over another CA without --force: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "data", "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the imported key: %v, mode %v; want 0600", err, fi.Mode())
	}

	// sluice signs with the imported RSA CA: a client trusting only it
	// gets through.
	r := startRunIn(t, dir, baseConfig(hosts), "")
	c := r.client() // trusts dir/data/ca.pem, the imported certificate
	if got, _ := os.ReadFile(filepath.Join(dir, "data", "ca.pem")); !bytes.Equal(got, readBytes(t, caCert)) {
		t.Fatal("data/ca.pem is not the imported certificate")
	}
	if code := status(t, c, "https://a.test/"); code != http.StatusOK {
		t.Errorf("through sluice with the imported CA: %d", code)
	}

	// The running sluice keeps the CA it loaded until it restarts.
	if out, err := run(otherCert, otherKey, "--force"); err != nil || !strings.Contains(out, "imported") {
		t.Fatalf("ca import --force: %q, %v", out, err)
	}
	replaced, _ := filepath.Glob(filepath.Join(dir, "data", "ca.*.replaced-*"))
	if len(replaced) != 2 {
		t.Errorf("after --force, the old CA's files kept beside: %v, want ca.pem and ca.key", replaced)
	}
}

func readBytes(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCATrustCommand: sluice ca trust puts the running config's CA into
// an NSS database (the store this machine can hold in a test without
// touching its own), says so, changes nothing the second time, and sluice
// ca untrust takes it out. internal/trust tests every store itself.
func TestCATrustCommand(t *testing.T) {
	certutil := testenv.RequireTool(t, "certutil", "libnss3-tools")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(baseConfig("  a.test: {}\n")), 0o644)
	db := t.TempDir()
	if out, err := exec.Command(certutil, "-N", "-d", "sql:"+db, "--empty-password").CombinedOutput(); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, out)
	}
	type result struct {
		Name   string
		Stores []struct {
			Store   string
			Changed bool
		}
	}
	do := func(cmd string) result {
		t.Helper()
		var out bytes.Buffer
		if err := Run(context.Background(), []string{"ca", cmd, "-c", cfg, "--nss", db, "--json"}, &out, io.Discard); err != nil {
			t.Fatalf("sluice ca %s: %v", cmd, err)
		}
		var r result
		if err := json.Unmarshal(out.Bytes(), &r); err != nil || len(r.Stores) != 1 {
			t.Fatalf("sluice ca %s --json: %q (%v)", cmd, out.String(), err)
		}
		return r
	}
	listed := func(name string) bool {
		out, _ := exec.Command(certutil, "-L", "-d", "sql:"+db).CombinedOutput()
		return strings.Contains(string(out), name)
	}
	first := do("trust")
	if !first.Stores[0].Changed || !strings.HasPrefix(first.Name, "sluice-") || !listed(first.Name) {
		t.Fatalf("sluice ca trust: %+v; the database lists it: %v", first, listed(first.Name))
	}
	if again := do("trust"); again.Stores[0].Changed {
		t.Error("sluice ca trust a second time changed the database")
	}
	if r := do("untrust"); !r.Stores[0].Changed || listed(first.Name) {
		t.Errorf("sluice ca untrust: %+v; still listed: %v", r, listed(first.Name))
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"ca", "untrust", "-c", cfg, "--nss", db}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "was not there") {
		t.Errorf("sluice ca untrust with nothing to remove: %q, %v", out.String(), err)
	}
}
