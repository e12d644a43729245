package ca

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"sluice/internal/atomicfile"
)

// PKCS12 returns the root certificate (never the key) as a PKCS#12 trust
// store, the form Java's keytool and Windows import.
func (r *Root) PKCS12(password string) ([]byte, error) {
	return pkcs12.Modern.EncodeTrustStore([]*x509.Certificate{r.Cert}, password)
}

// systemBundles are where the common distributions keep their root bundle.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine, Arch
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // RHEL 7+
	"/etc/ssl/cert.pem",                                 // macOS, Alpine, BSDs
}

// BundlePath returns where WriteBundle puts the client CA bundle.
func BundlePath(dir string) string { return filepath.Join(dir, "ca-bundle.pem") }

// WriteBundle writes the system's root bundle followed by sluice's root to
// BundlePath(dir), for clients that take one CA file (SSL_CERT_FILE,
// REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE). It returns the path.
func (r *Root) WriteBundle(dir string) (string, error) {
	path := BundlePath(dir)
	b, err := r.Bundle()
	if err != nil {
		return "", err
	}
	return path, atomicfile.Write(path, b, 0o644)
}

// Bundle is the system roots followed by sluice's CA certificate.
func (r *Root) Bundle() ([]byte, error) {
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
	b.Write(r.CertPEM)
	return b.Bytes(), nil
}
