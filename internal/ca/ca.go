// Package ca is sluice's certificate authority: it creates or loads the root
// in the data directory and mints short-lived ECDSA leaf certificates, on
// demand, for the hosts the policy allows, and only for those.
//
// Files: DATA_DIR/ca.pem (the root, public) and DATA_DIR/ca.key (0600; a key
// readable by group or others is refused). Metrics: sluice_ca_leaves_minted_total,
// sluice_ca_leaf_cache_total{result}.
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"sluice/internal/atomicfile"
)

const (
	certFile = "ca.pem"
	keyFile  = "ca.key"
)

// Root is the CA certificate and its key.
type Root struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer // ECDSA when sluice made it; ECDSA or RSA when imported
	// Created reports whether OpenRoot generated the root just now.
	Created bool
}

// CertPath returns where the root certificate of dir is kept.
func CertPath(dir string) string { return filepath.Join(dir, certFile) }

// OpenRoot loads the root from dir, or creates it (and dir) if neither
// file exists. now is the clock used for validity checks.
func OpenRoot(dir string, now func() time.Time) (*Root, error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		return createRoot(dir, now())
	case errors.Is(certErr, os.ErrNotExist):
		return nil, fmt.Errorf("%s exists but %s is missing: restore it, or remove both to create a new CA (clients must then trust the new one)", keyPath, certPath)
	case errors.Is(keyErr, os.ErrNotExist):
		return nil, fmt.Errorf("%s exists but %s is missing: restore it, or remove both to create a new CA (clients must then trust the new one)", certPath, keyPath)
	}
	return loadRoot(certPath, keyPath, now())
}

func loadRoot(certPath, keyPath string, now time.Time) (*Root, error) {
	fi, err := os.Stat(keyPath)
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o): run chmod 600 %s", keyPath, perm, keyPath)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	root, err := parseRoot(certPEM, keyPEM, certPath, keyPath, now)
	if err != nil {
		return nil, err
	}
	if now.After(root.Cert.NotAfter) {
		return nil, fmt.Errorf("%s expired on %s: remove %s and %s to create a new CA", certPath, root.Cert.NotAfter.Format(time.DateOnly), certPath, keyPath)
	}
	return root, nil
}

// parseRoot checks that certPEM is a CA certificate that keyPEM signs for:
// the key ECDSA, or RSA of 2048 bits or more.
func parseRoot(certPEM, keyPEM []byte, certPath, keyPath string, now time.Time) (*Root, error) {
	if bytes.Contains(keyPEM, []byte("ENCRYPTED")) {
		return nil, fmt.Errorf("%s is encrypted: sluice needs the key in clear (openssl pkey -in %s -out ca.key, then chmod 600 ca.key)", keyPath, keyPath)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA from %s and %s: %w", certPath, keyPath, err)
	}
	var key crypto.Signer
	switch k := pair.PrivateKey.(type) {
	case *ecdsa.PrivateKey:
		key = k
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%s: an RSA key of %d bits is too weak for a CA (2048 at least)", keyPath, k.N.BitLen())
		}
		key = k
	default:
		return nil, fmt.Errorf("%s: the CA key must be ECDSA or RSA, not %T", keyPath, pair.PrivateKey)
	}
	cert := pair.Leaf
	if !cert.IsCA || cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s is not a CA certificate (it may not sign certificates)", certPath)
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("%s is not valid before %s", certPath, cert.NotBefore.Format(time.RFC3339))
	}
	// Only the first certificate of certPEM: what clients must trust.
	first := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	return &Root{Cert: cert, CertPEM: first, key: key}, nil
}

// Import makes the CA in certPath and keyPath (an existing CA: a fleet's
// shared one, or the one an old stack's clients already trust) the CA of
// dir. A different CA already there is replaced only when replace is set,
// and then kept beside as ca.pem.replaced-TIME and ca.key.replaced-TIME;
// the same CA is left as it is (changed false).
func Import(dir, certPath, keyPath string, now time.Time, replace bool) (root *Root, changed bool, err error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, false, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, false, err
	}
	root, err = parseRoot(certPEM, keyPEM, certPath, keyPath, now)
	if err != nil {
		return nil, false, err
	}
	if now.After(root.Cert.NotAfter) {
		return nil, false, fmt.Errorf("%s expired on %s", certPath, root.Cert.NotAfter.Format(time.DateOnly))
	}
	oldCert, oldKey := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	if old, err := os.ReadFile(oldCert); err == nil {
		if existing, perr := ParseCertPEM(old); perr == nil && bytes.Equal(existing.Raw, root.Cert.Raw) {
			return root, false, nil
		}
		if !replace {
			return nil, false, fmt.Errorf("%s already has a CA (%s): --force replaces it, and every client that trusts it must then trust the imported one", dir, certSubject(old))
		}
		suffix := ".replaced-" + now.UTC().Format("20060102T150405Z")
		for _, p := range []string{oldKey, oldCert} {
			if err := os.Rename(p, p+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, false, err
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create data dir: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(root.key)
	if err != nil {
		return nil, false, err
	}
	// The key first, as createRoot does.
	if err := atomicfile.Write(oldKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, false, err
	}
	if err := atomicfile.Write(oldCert, root.CertPEM, 0o644); err != nil {
		return nil, false, err
	}
	return root, true, nil
}

func certSubject(certPEM []byte) string {
	c, err := ParseCertPEM(certPEM)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return fmt.Sprintf("%q, valid until %s", c.Subject.CommonName, c.NotAfter.Format(time.DateOnly))
}

func createRoot(dir string, now time.Time) (*Root, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"sluice"}, CommonName: fmt.Sprintf("sluice CA %s %s", host, now.Format(time.DateOnly))},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs leaves only, never another CA
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The key first: a crash between the two writes leaves a key without a
	// certificate, which OpenRoot reports instead of silently replacing.
	if err := atomicfile.Write(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, certFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Root{Cert: cert, CertPEM: certPEM, key: key, Created: true}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

func keyID(pub *ecdsa.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return sum[:20]
}

// Sign creates a leaf for names (host names or IPs) valid from now for
// validity. Callers decide which names deserve one: the Authority asks its
// policy; the HTTPS-proxy listener signs only its own names.
func (r *Root) Sign(names []string, now time.Time, validity time.Duration) (*tls.Certificate, error) {
	tmpl := leafTemplate(names[0], now, validity, x509.ExtKeyUsageServerAuth)
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	c, err := r.issue(tmpl)
	if err != nil {
		return nil, fmt.Errorf("mint leaf for %q: %w", names, err)
	}
	return c, nil
}

// SignClient creates a client certificate for the client name (its common
// name), good for client authentication only, and returns it and its key
// as PEM.
func (r *Root) SignClient(name string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	c, err := r.issue(leafTemplate(name, now, validity, x509.ExtKeyUsageClientAuth))
	if err != nil {
		return nil, nil, fmt.Errorf("mint client certificate for %q: %w", name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func leafTemplate(name string, now time.Time, validity time.Duration, usage x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"sluice"}, CommonName: name},
		NotBefore:             now.Add(-time.Hour), // tolerate clients whose clocks lag
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}
}

// issue signs tmpl with a new P-256 key.
func (r *Root) issue(tmpl *x509.Certificate) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.Cert, &key.PublicKey, r.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
