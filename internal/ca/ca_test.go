package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

func TestRootCreatedOnceThenReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r1, err := OpenRoot(dir, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if !r1.Created || !r1.Cert.IsCA {
		t.Fatalf("first OpenRoot: created %v, IsCA %v", r1.Created, r1.Cert.IsCA)
	}
	if _, ok := r1.Cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("root key is %T, want ECDSA", r1.Cert.PublicKey)
	}
	fi, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode = %v (err %v), want 0600", fi.Mode().Perm(), err)
	}
	r2, err := OpenRoot(dir, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Created || !r2.Cert.Equal(r1.Cert) {
		t.Errorf("second OpenRoot created a new CA; want the first one reused")
	}
}

func TestRootRefusesReadableKey(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenRoot(dir, time.Now); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "ca.key")
	os.Chmod(key, 0o644)
	if _, err := OpenRoot(dir, time.Now); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("OpenRoot with ca.key 0644: err %v, want a refusal telling to chmod 600", err)
	}
	os.Chmod(key, 0o600)
	os.Remove(filepath.Join(dir, "ca.pem"))
	if _, err := OpenRoot(dir, time.Now); err == nil || !strings.Contains(err.Error(), "ca.pem is missing") {
		t.Errorf("OpenRoot with the certificate gone: err %v, want a refusal, not a silent new CA", err)
	}
}

func newAuthority(t *testing.T, opts Options) *Authority {
	t.Helper()
	root, err := OpenRoot(t.TempDir(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Allow == nil {
		opts.Allow = func(string) error { return nil }
	}
	a, err := New(root, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestLeaf(t *testing.T) {
	a := newAuthority(t, Options{})
	roots := x509.NewCertPool()
	roots.AddCert(a.Root().Cert)
	for _, host := range []string{"api.binance.com", "127.0.0.1", "::1"} {
		c, err := a.Leaf(host)
		if err != nil {
			t.Fatalf("Leaf(%q): %v", host, err)
		}
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("Leaf(%q) does not verify for %q: %v", host, host, err)
		}
		if n := len(c.Leaf.DNSNames) + len(c.Leaf.IPAddresses); n != 1 {
			t.Errorf("Leaf(%q) has %d SANs (%v %v), want exactly 1", host, n, c.Leaf.DNSNames, c.Leaf.IPAddresses)
		}
	}
	c, _ := a.Leaf("api.binance.com")
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "evil.binance.com"}); err == nil {
		t.Error("leaf for api.binance.com verifies for evil.binance.com")
	}
}

func TestLeafVeto(t *testing.T) {
	denied := errors.New("not intercepted")
	a := newAuthority(t, Options{Allow: func(h string) error {
		if h == "evil.test" {
			return denied
		}
		return nil
	}})
	if _, err := a.Leaf("evil.test"); !errors.Is(err, denied) {
		t.Errorf("Leaf for a vetoed host: err %v, want the veto", err)
	}
	if got := testutil.ToFloat64(a.minted); got != 0 {
		t.Errorf("minted %v leaves for a vetoed host", got)
	}
}

func TestLeafBurstMintsOnce(t *testing.T) {
	a := newAuthority(t, Options{})
	var wg sync.WaitGroup
	certs := make([][]byte, 100)
	for i := range certs {
		wg.Go(func() {
			c, err := a.Leaf("burst.test")
			if err == nil {
				certs[i] = c.Certificate[0]
			}
		})
	}
	wg.Wait()
	if got := testutil.ToFloat64(a.minted); got != 1 {
		t.Errorf("100 concurrent Leaf calls minted %v leaves, want 1", got)
	}
	for i, c := range certs {
		if !bytes.Equal(c, certs[0]) {
			t.Fatalf("caller %d got a different certificate", i)
		}
	}
}

func TestLeafCacheBoundAndRenewal(t *testing.T) {
	now := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	a := newAuthority(t, Options{CacheSize: 2, LeafValidity: 8 * time.Hour, Now: func() time.Time { return now }})
	for _, h := range []string{"a.test", "b.test", "c.test"} {
		if _, err := a.Leaf(h); err != nil {
			t.Fatal(err)
		}
	}
	if a.Len() != 2 {
		t.Errorf("cache holds %d leaves, want the bound 2", a.Len())
	}
	first, _ := a.Leaf("c.test")
	now = now.Add(5 * time.Hour) // 3h of 8h left: more than a quarter
	if c, _ := a.Leaf("c.test"); c != first {
		t.Error("leaf re-minted while more than a quarter of its validity was left")
	}
	now = now.Add(2 * time.Hour) // 1h left
	renewed, _ := a.Leaf("c.test")
	if renewed == first || !renewed.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Error("leaf with less than a quarter of its validity left was not re-minted")
	}
}

func TestExports(t *testing.T) {
	dir := t.TempDir()
	root, err := OpenRoot(dir, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	p12, err := TrustStore(root.CertPEM, "changeit")
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pkcs12.DecodeTrustStore(p12, "changeit")
	if err != nil || len(certs) != 1 || !certs[0].Equal(root.Cert) {
		t.Errorf("PKCS12 trust store decodes to %d certs (err %v), want the root", len(certs), err)
	}
	data, err := Bundle(root.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !bytes.HasSuffix(data, root.CertPEM) || !pool.AppendCertsFromPEM(data) {
		t.Errorf("bundle does not end with the sluice CA")
	}
	if _, err := TrustStore([]byte("not PEM"), "changeit"); err == nil {
		t.Error("TrustStore of no PEM: no error")
	}
}
