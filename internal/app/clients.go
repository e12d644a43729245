package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"sluice/internal/ca"
)

// clientsCertCmd mints a client certificate from sluice's CA for a client
// of the config with certificate: true: sluice clients cert NAME.
func clientsCertCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("clients cert", stdout, stderr)
	outDir := fs.StringP("output", "o", ".", "write NAME.pem and NAME.key (mode 0600) into `DIR`")
	valid := fs.Duration("valid", 365*24*time.Hour, "how long the certificate is valid")
	name, rest, done, err := parseVerb(fs, args)
	if done {
		return err
	}
	if name == "" || len(rest) > 0 {
		return errors.New("usage: sluice " + commands["clients cert"].synopsis)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if c := cfg.Clients[name]; c == nil || !c.Certificate {
		return fmt.Errorf("no client %q with certificate: true under clients: in %s", name, cfg.Dir)
	}
	root, err := ca.OpenRoot(cfg.Path(cfg.DataDir), time.Now)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := root.SignClient(name, time.Now(), *valid)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*outDir, name+".pem"), filepath.Join(*outDir, name+".key")
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w (remove the old key first to mint a new one)", err)
	}
	if _, err := f.Write(keyPEM); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n%s\nthe client presents them on listen.proxy_tls (an https:// proxy URL); valid until %s\n", certPath, keyPath, time.Now().Add(*valid).Format(time.DateOnly))
	return nil
}
