// Package ca is sluice's certificate authority: it creates or loads the root
// in the data directory and mints short-lived ECDSA leaf certificates, on
// demand, for the hosts the policy allows, and only for those.
//
// Files: DATA_DIR/ca.pem (the root, public) and DATA_DIR/ca.key (0600; a key
// readable by group or others is refused). Metrics: sluice_ca_leaves_minted_total,
// sluice_ca_leaf_cache_total{result}.
package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
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
	key     *ecdsa.PrivateKey
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
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA from %s and %s: %w", certPath, keyPath, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: the CA key must be ECDSA", keyPath)
	}
	cert := pair.Leaf
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%s expired on %s: remove %s and %s to create a new CA", certPath, cert.NotAfter.Format(time.DateOnly), certPath, keyPath)
	}
	return &Root{Cert: cert, CertPEM: certPEM, key: key}, nil
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
