package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// TrustStore returns the CA certificate certPEM (never a key) as a
// PKCS#12 trust store, the form Java's keytool and Windows import.
func TrustStore(certPEM []byte, password string) ([]byte, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	return pkcs12.Modern.EncodeTrustStore([]*x509.Certificate{cert}, password)
}

// ParseCertPEM parses the first certificate of a PEM block list.
func ParseCertPEM(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// systemBundles are where the common distributions keep their root bundle.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine, Arch
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // RHEL 7+
	"/etc/ssl/cert.pem",                                 // macOS, Alpine, BSDs
}

// BundlePath returns where the client CA bundle is kept in dir.
func BundlePath(dir string) string { return filepath.Join(dir, "ca-bundle.pem") }

// Bundle is the system roots followed by the CA certificate certPEM, for
// clients that take one CA file (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
// CURL_CA_BUNDLE).
func Bundle(certPEM []byte) ([]byte, error) {
	var b bytes.Buffer
	found := false
	for _, p := range systemBundles {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		b.Write(data)
		if !bytes.HasSuffix(data, []byte("\n")) {
			b.WriteByte('\n')
		}
		found = true
		break
	}
	if !found {
		return nil, errors.New("no system root bundle found (looked in " + fmt.Sprint(systemBundles) + "); install ca-certificates")
	}
	b.WriteString("# sluice CA\n")
	b.Write(certPEM)
	return b.Bytes(), nil
}
