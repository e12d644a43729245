package app

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"sluice/internal/ca"
	"sluice/internal/trust"
)

func caExportCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("ca export", stdout, stderr)
	format := fs.String("format", "pem", "`pem`, der (binary, for Android and Windows), bundle (the system roots and the CA, for REQUESTS_CA_BUNDLE or SSL_CERT_FILE) or p12 (a PKCS#12 trust store: the certificate, never the key)")
	outPath := fs.StringP("output", "o", "", "write to `FILE` instead of standard output")
	password := fs.String("password", "changeit", "password of the p12 trust store (Java's default)")
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if !slices.Contains([]string{"pem", "der", "bundle", "p12"}, *format) {
		return fmt.Errorf("--format %q: want pem, der, bundle or p12", *format)
	}
	certPEM, _, err := caCertificate(cfg)
	if err != nil {
		return err
	}
	data := certPEM
	switch *format {
	case "der":
		c, err := ca.ParseCertPEM(certPEM)
		if err != nil {
			return err
		}
		data = c.Raw
	case "bundle":
		if data, err = ca.Bundle(certPEM); err != nil {
			return err
		}
	case "p12":
		if data, err = ca.TrustStore(certPEM, *password); err != nil {
			return err
		}
	}
	if *outPath == "" {
		_, err = stdout.Write(data)
		return err
	}
	return os.WriteFile(*outPath, data, 0o644)
}

// caTrustCmd installs (or with remove, takes out) sluice's CA in the
// trust stores named by the flags: the system's when none is named.
func caTrustCmd(name string, remove bool) func(args []string, stdout, stderr io.Writer) error {
	return func(args []string, stdout, stderr io.Writer) error {
		fs, cfgPath := flags(name, stdout, stderr)
		system := fs.Bool("system", false, "the operating system's store (the default when no other store is named)")
		pythons := fs.StringArray("python", nil, "the certifi bundle of the Python environment whose interpreter is `PATH` (repeatable): requests, aiohttp, ccxt and freqtrade read it, not the system store")
		java := fs.Bool("java", false, "the Java runtime's cacerts (with --keystore: that keystore), with the JDK's keytool")
		keystore := fs.String("keystore", "", "with --java: this keystore `FILE` instead of the runtime's cacerts")
		storepass := fs.String("storepass", "changeit", "with --java: the keystore's password")
		nss := fs.StringArray("nss", nil, "the NSS database in `DIR` (Chromium: ~/.pki/nssdb; a Firefox profile directory), with certutil")
		asJSON := fs.Bool("json", false, "print what was done as JSON")
		if done, err := parse(fs, args); done {
			return err
		}
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		certPEM, _, err := caCertificate(cfg)
		if err != nil {
			return err
		}
		cert, err := trust.ParseCert(certPEM)
		if err != nil {
			return fmt.Errorf("sluice's CA: %w", err)
		}
		var stores []trust.Store
		if *system || len(*pythons) == 0 && !*java && len(*nss) == 0 {
			s, err := trust.FindSystem()
			if err != nil {
				return err
			}
			stores = append(stores, s)
		}
		for _, p := range *pythons {
			s, err := trust.FindCertifi(p)
			if err != nil {
				return err
			}
			stores = append(stores, s)
		}
		if *java {
			s, err := trust.FindJava(*keystore, *storepass)
			if err != nil {
				return err
			}
			stores = append(stores, s)
		}
		for _, dir := range *nss {
			s, err := trust.FindNSS(dir)
			if err != nil {
				return err
			}
			stores = append(stores, s)
		}
		type result struct {
			Store   string `json:"store"`
			Changed bool   `json:"changed"`
			Error   string `json:"error,omitempty"`
		}
		var results []result
		var failed error
		for _, s := range stores {
			op := s.Install
			if remove {
				op = s.Remove
			}
			changed, err := op(cert)
			r := result{Store: s.String(), Changed: changed}
			if err != nil {
				r.Error, failed = err.Error(), fmt.Errorf("%s: %w", s, err)
			}
			results = append(results, r)
		}
		if *asJSON {
			if err := json.NewEncoder(stdout).Encode(map[string]any{"ca": cert.Subject(), "name": cert.Name(), "remove": remove, "stores": results}); err != nil {
				return err
			}
			return failed
		}
		for _, r := range results {
			switch {
			case r.Error != "":
				fmt.Fprintf(stdout, "%s: failed: %s\n", r.Store, r.Error)
			case remove && r.Changed:
				fmt.Fprintf(stdout, "%s: removed %s (%s)\n", r.Store, cert.Subject(), cert.Name())
			case remove:
				fmt.Fprintf(stdout, "%s: %s was not there\n", r.Store, cert.Name())
			case r.Changed:
				fmt.Fprintf(stdout, "%s: installed %s (%s)\n", r.Store, cert.Subject(), cert.Name())
			default:
				fmt.Fprintf(stdout, "%s: %s was there already\n", r.Store, cert.Name())
			}
		}
		return failed
	}
}

// caImportCmd makes an existing CA sluice's.
func caImportCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("ca import", stdout, stderr)
	force := fs.Bool("force", false, "replace the CA the data dir has (kept beside it as ca.pem.replaced-TIME)")
	certPath, rest, done, err := parseVerb(fs, args)
	if done {
		return err
	}
	if len(rest) != 1 {
		return fmt.Errorf("usage: sluice %s", commands["ca import"].synopsis)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	dir := cfg.Path(cfg.DataDir)
	root, changed, err := ca.Import(dir, certPath, rest[0], time.Now(), *force)
	if err != nil {
		return err
	}
	if !changed {
		fmt.Fprintf(stdout, "%s already holds this CA (%q)\n", dir, root.Cert.Subject.CommonName)
		return nil
	}
	fmt.Fprintf(stdout, "imported %q (valid until %s) into %s; restart sluice to sign with it\n", root.Cert.Subject.CommonName, root.Cert.NotAfter.Format(time.DateOnly), dir)
	return nil
}
