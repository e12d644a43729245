package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"sluice/internal/ca"
	"sluice/internal/doctor"
	"sluice/internal/onboard"
)

// doctorCmd checks, in a client's shell, whether its clients go through
// sluice with a verified certificate, and says how to fix what does not.
func doctorCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("doctor", stdout, stderr)
	target := fs.String("url", "https://api.binance.com/api/v3/ping", "an HTTPS `URL` of an allowed host, requested once per runtime")
	python := fs.String("python", "python3", "the Python `interpreter` of the bots' environment")
	asJSON := fs.Bool("json", false, "print the checks as JSON")
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	o := doctor.Options{URL: *target, Python: *python, ProxyURL: "http://" + clientAddr(cfg.Listen.Proxy)}
	// sluice's CA: from the sluice this shell's proxy is, else from the config.
	if caPEM, err := caThroughProxy(); err == nil {
		o.CA = caPEM
	} else if caPEM, dir, err := caCertificate(cfg); err == nil {
		o.CA = caPEM
		if dir != "" {
			o.Bundle = ca.BundlePath(dir)
		}
	}
	if o.Bundle == "" {
		if dir := cfg.Path(cfg.DataDir); fileExists(ca.BundlePath(dir)) {
			o.Bundle = ca.BundlePath(dir)
		}
	}
	results := doctor.Run(context.Background(), o)
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(results); err != nil {
			return err
		}
	} else {
		doctor.Write(stdout, results)
	}
	failed := 0
	for _, r := range results {
		if r.Status == "fail" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d %s failed", failed, plural(failed, "check"))
	}
	return nil
}

// caThroughProxy fetches the CA of the sluice that HTTPS_PROXY names,
// from its onboarding page.
func caThroughProxy() ([]byte, error) {
	proxy := os.Getenv("HTTPS_PROXY")
	if proxy == "" {
		proxy = os.Getenv("https_proxy")
	}
	u, err := url.Parse(proxy)
	if proxy == "" || err != nil {
		return nil, fmt.Errorf("no usable HTTPS_PROXY (%q)", proxy)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
	resp, err := c.Get("http://" + onboard.Host + "/ca.pem")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %v %s", proxy, err, resp.Status)
	}
	if _, err := ca.ParseCertPEM(body); err != nil {
		return nil, err
	}
	return body, nil
}

func fileExists(path string) bool { _, err := os.Stat(path); return err == nil }
