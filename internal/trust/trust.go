// Package trust installs sluice's CA certificate in the trust stores that
// clients read, and removes it again: the operating system's store
// (Debian/Ubuntu, Alpine, RHEL/Fedora), a Python environment's certifi
// bundle, a Java keystore and an NSS database. Every operation is
// idempotent and reports whether it changed anything.
package trust

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sluice/internal/atomicfile"
	"sluice/internal/ca"
)

// Cert is the CA certificate to install.
type Cert struct {
	PEM  []byte
	x509 *x509.Certificate
}

// ParseCert reads a PEM CA certificate.
func ParseCert(certPEM []byte) (*Cert, error) {
	c, err := ca.ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if !c.IsCA {
		return nil, errors.New("not a CA certificate")
	}
	return &Cert{PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), x509: c}, nil
}

// Name is the certificate's name in every store: "sluice-" and the first
// 16 hex digits of its SHA-256 fingerprint, so that two sluice CAs on one
// machine do not replace each other, and untrust removes only its own.
func (c *Cert) Name() string {
	sum := sha256.Sum256(c.x509.Raw)
	return "sluice-" + hex.EncodeToString(sum[:8])
}

// Subject is the certificate's common name, for messages.
func (c *Cert) Subject() string { return c.x509.Subject.CommonName }

// Store is a trust store.
type Store interface {
	// String names the store and where it is, for messages.
	String() string
	// Install adds the certificate; changed is false when it was there.
	Install(c *Cert) (changed bool, err error)
	// Remove takes the certificate out; changed is false when it was not there.
	Remove(c *Cert) (changed bool, err error)
}

// run runs a store's tool, its output in the error when it fails.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// withPEMFile hands f the path of a temporary file holding the
// certificate, for the tools that read one.
func withPEMFile(c *Cert, f func(path string) error) error {
	tmp, err := os.CreateTemp("", "sluice-ca-*.pem")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(c.PEM)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return f(tmp.Name())
}

// System is the operating system's store: an anchor directory and the
// command that rebuilds the bundle every TLS library reads from it.
type System struct {
	Distro  string // for messages
	Anchors string // where a CA file goes
	Update  []string
	Bundle  string // the bundle Update writes, checked after it ran
}

// systems are the stores sluice knows, by the anchor directory and update
// command that identify them.
var systems = []System{
	{"Debian/Ubuntu/Alpine", "/usr/local/share/ca-certificates", []string{"update-ca-certificates"}, "/etc/ssl/certs/ca-certificates.crt"},
	{"RHEL/Fedora", "/etc/pki/ca-trust/source/anchors", []string{"update-ca-trust", "extract"}, "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"},
}

// FindSystem returns this machine's system store.
func FindSystem() (*System, error) {
	for _, s := range systems {
		if _, err := exec.LookPath(s.Update[0]); err != nil {
			continue
		}
		if fi, err := os.Stat(s.Anchors); err == nil && fi.IsDir() {
			return &s, nil
		}
	}
	return nil, errors.New("no system trust store that sluice knows (Debian/Ubuntu and Alpine: update-ca-certificates with /usr/local/share/ca-certificates; RHEL/Fedora: update-ca-trust with /etc/pki/ca-trust/source/anchors); install ca-certificates, or install the file of sluice ca export by hand")
}

func (s *System) String() string {
	return fmt.Sprintf("the system store (%s, %s)", s.Distro, s.Anchors)
}

func (s *System) path(c *Cert) string { return filepath.Join(s.Anchors, c.Name()+".crt") }

func (s *System) Install(c *Cert) (bool, error) {
	old, err := os.ReadFile(s.path(c))
	if err == nil && bytes.Equal(old, c.PEM) && s.bundleHas(c) {
		return false, nil
	}
	if err := atomicfile.Write(s.path(c), c.PEM, 0o644); err != nil {
		return false, err
	}
	if err := run(s.Update[0], s.Update[1:]...); err != nil {
		return false, err
	}
	if !s.bundleHas(c) {
		return false, fmt.Errorf("%s ran, but %s does not hold the CA", s.Update[0], s.Bundle)
	}
	return true, nil
}

func (s *System) Remove(c *Cert) (bool, error) {
	err := os.Remove(s.path(c))
	if errors.Is(err, os.ErrNotExist) && !s.bundleHas(c) {
		return false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if err := run(s.Update[0], s.Update[1:]...); err != nil {
		return false, err
	}
	if s.bundleHas(c) {
		return false, fmt.Errorf("%s ran, but %s still holds the CA", s.Update[0], s.Bundle)
	}
	return true, nil
}

// bundleHas reports whether the bundle holds the certificate.
func (s *System) bundleHas(c *Cert) bool {
	data, err := os.ReadFile(s.Bundle)
	return err == nil && pemHas(data, c)
}

// pemHas reports whether a PEM bundle holds the certificate.
func pemHas(bundle []byte, c *Cert) bool {
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return false
		}
		if bytes.Equal(block.Bytes, c.x509.Raw) {
			return true
		}
	}
}

// Certifi is the certifi bundle of a Python environment: Python's
// requests and aiohttp (through ccxt and freqtrade) read it, not the
// system store. A certifi upgrade replaces the file: run trust again.
type Certifi struct {
	Python string
	Bundle string
}

// FindCertifi asks python where its certifi bundle is.
func FindCertifi(python string) (*Certifi, error) {
	out, err := exec.Command(python, "-c", "import certifi; print(certifi.where())").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("%s cannot import certifi (%s): install it in that environment (pip install certifi), or give the python of the environment the bots run in", python, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("running %s: %w", python, err)
	}
	bundle := strings.TrimSpace(string(out))
	if resolved, err := filepath.EvalSymlinks(bundle); err == nil && isSystemBundle(resolved) {
		return nil, fmt.Errorf("%s's certifi uses the system bundle %s (a distribution's patched certifi): run sluice ca trust without --python instead", python, resolved)
	}
	return &Certifi{Python: python, Bundle: bundle}, nil
}

func isSystemBundle(path string) bool {
	for _, s := range systems {
		if path == s.Bundle {
			return true
		}
	}
	return path == "/etc/ssl/cert.pem" || path == "/etc/pki/tls/certs/ca-bundle.crt"
}

func (p *Certifi) String() string { return fmt.Sprintf("%s's certifi bundle (%s)", p.Python, p.Bundle) }

// The block that Install appends, between these lines, is what Remove takes out.
func certifiBegin(c *Cert) string {
	return "# " + c.Name() + ": sluice's CA, added by sluice ca trust (sluice ca untrust removes it)\n"
}
func certifiEnd(c *Cert) string { return "# end of " + c.Name() + "\n" }

func (p *Certifi) Install(c *Cert) (bool, error) {
	data, err := os.ReadFile(p.Bundle)
	if err != nil {
		return false, err
	}
	if bytes.Contains(data, []byte(certifiBegin(c))) {
		return false, nil
	}
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		data = append(data, '\n')
	}
	data = append(data, certifiBegin(c)...)
	data = append(data, c.PEM...)
	data = append(data, certifiEnd(c)...)
	return true, writeKeepingMode(p.Bundle, data)
}

func (p *Certifi) Remove(c *Cert) (bool, error) {
	data, err := os.ReadFile(p.Bundle)
	if err != nil {
		return false, err
	}
	before, rest, found := bytes.Cut(data, []byte(certifiBegin(c)))
	if !found {
		return false, nil
	}
	_, after, found := bytes.Cut(rest, []byte(certifiEnd(c)))
	if !found {
		return false, fmt.Errorf("%s: the block of %s has no end line %q; remove it by hand", p.Bundle, c.Name(), strings.TrimSpace(certifiEnd(c)))
	}
	return true, writeKeepingMode(p.Bundle, append(before, after...))
}

func writeKeepingMode(path string, data []byte) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, data, fi.Mode().Perm())
}

// Java is a Java keystore: the JDK's cacerts (Keystore "") or a file.
type Java struct {
	Keytool   string
	Keystore  string
	Storepass string
}

// FindJava finds keytool for a keystore ("" : the JDK's cacerts).
func FindJava(keystore, storepass string) (*Java, error) {
	kt, err := exec.LookPath("keytool")
	if err != nil {
		return nil, errors.New("keytool is not installed (it comes with the JDK or JRE: apt-get install default-jre-headless)")
	}
	return &Java{Keytool: kt, Keystore: keystore, Storepass: storepass}, nil
}

func (j *Java) String() string {
	if j.Keystore == "" {
		return "the Java runtime's cacerts"
	}
	return "the Java keystore " + j.Keystore
}

func (j *Java) store() []string {
	if j.Keystore == "" {
		return []string{"-cacerts", "-storepass", j.Storepass}
	}
	return []string{"-keystore", j.Keystore, "-storepass", j.Storepass}
}

func (j *Java) has(c *Cert) bool {
	return exec.Command(j.Keytool, append([]string{"-list", "-alias", c.Name()}, j.store()...)...).Run() == nil
}

func (j *Java) Install(c *Cert) (bool, error) {
	if j.has(c) {
		return false, nil
	}
	return true, withPEMFile(c, func(path string) error {
		return run(j.Keytool, append([]string{"-importcert", "-noprompt", "-trustcacerts", "-alias", c.Name(), "-file", path}, j.store()...)...)
	})
}

func (j *Java) Remove(c *Cert) (bool, error) {
	if !j.has(c) {
		return false, nil
	}
	return true, run(j.Keytool, append([]string{"-delete", "-alias", c.Name()}, j.store()...)...)
}

// NSS is an NSS database (Chromium's and Firefox's on Linux:
// ~/.pki/nssdb, or a Firefox profile directory).
type NSS struct {
	Certutil string
	Dir      string
}

// FindNSS finds certutil for the database in dir.
func FindNSS(dir string) (*NSS, error) {
	cu, err := exec.LookPath("certutil")
	if err != nil {
		return nil, errors.New("certutil is not installed (apt-get install libnss3-tools)")
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("--nss %s: not a directory (Chromium's database is ~/.pki/nssdb; create one with certutil -N -d sql:DIR --empty-password)", dir)
	}
	return &NSS{Certutil: cu, Dir: dir}, nil
}

func (n *NSS) String() string { return "the NSS database " + n.Dir }

func (n *NSS) db() string { return "sql:" + n.Dir }

func (n *NSS) has(c *Cert) bool {
	return exec.Command(n.Certutil, "-L", "-d", n.db(), "-n", c.Name()).Run() == nil
}

func (n *NSS) Install(c *Cert) (bool, error) {
	if n.has(c) {
		return false, nil
	}
	// C: a trusted CA for TLS servers; nothing for mail or code signing.
	return true, withPEMFile(c, func(path string) error {
		return run(n.Certutil, "-A", "-d", n.db(), "-n", c.Name(), "-t", "C,,", "-a", "-i", path)
	})
}

func (n *NSS) Remove(c *Cert) (bool, error) {
	if !n.has(c) {
		return false, nil
	}
	return true, run(n.Certutil, "-D", "-d", n.db(), "-n", c.Name())
}
