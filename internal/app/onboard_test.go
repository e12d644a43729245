package app

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"sluice/internal/testenv"
)

// TestOnboardingPageWithCurl: curl, pointed at sluice as its proxy, gets
// the onboarding page at http://sluice.invalid/ and the CA in each form,
// each the CA that sluice signs with; https:// gets a refusal saying to
// use http://; nothing is forwarded.
func TestOnboardingPageWithCurl(t *testing.T) {
	curl := testenv.RequireTool(t, "curl")
	r := startRun(t, baseConfig("  a.test: {}\n"))
	caPEM := readBytes(t, filepath.Join(r.dir, "data", "ca.pem"))
	block, _ := pem.Decode(caPEM)
	body := filepath.Join(t.TempDir(), "body")
	get := func(u string) (string, int) {
		t.Helper()
		out, err := exec.Command(curl, "-sS", "--max-time", "10", "--noproxy", "", "--proxy", "http://"+r.addrs["proxy"], "-o", body, "-w", "%{http_code}", u).Output()
		if err != nil {
			t.Fatalf("curl %s: %v", u, err)
		}
		code, _ := strconv.Atoi(string(out))
		return string(readBytes(t, body)), code
	}
	page, code := get("http://sluice.invalid/")
	if code != 200 || !strings.Contains(page, "<title>Trust sluice's CA</title>") || !strings.Contains(page, "sluice ca trust") || !strings.Contains(page, "-----BEGIN CERTIFICATE-----") {
		t.Errorf("the onboarding page: %d\n%.400s", code, page)
	}
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "ca.der", "ca.p12"} {
		out := filepath.Join(dir, f)
		if b, err := exec.Command(curl, "-sS", "--fail", "--max-time", "10", "--noproxy", "", "--proxy", "http://"+r.addrs["proxy"], "-o", out, "http://sluice.invalid/"+f).CombinedOutput(); err != nil {
			t.Fatalf("curl %s: %v\n%s", f, err, b)
		}
	}
	if got := readBytes(t, filepath.Join(dir, "ca.pem")); !bytes.Equal(got, caPEM) {
		t.Errorf("ca.pem is not sluice's CA:\n%s", got)
	}
	if got := readBytes(t, filepath.Join(dir, "ca.der")); !bytes.Equal(got, block.Bytes) {
		t.Error("ca.der is not sluice's CA")
	}
	certs, err := pkcs12.DecodeTrustStore(readBytes(t, filepath.Join(dir, "ca.p12")), "changeit")
	if err != nil || len(certs) != 1 || !bytes.Equal(certs[0].Raw, block.Bytes) {
		t.Errorf("ca.p12: %v, %d certificates; want sluice's CA alone", err, len(certs))
	}
	if _, code := get("http://sluice.invalid/nothing"); code != 404 {
		t.Errorf("an unknown path of the page: %d, want 404", code)
	}
	// Over TLS the client could not trust the page: refused, with why.
	out, _ := exec.Command(curl, "-sS", "-v", "--max-time", "10", "--noproxy", "", "--proxy", "http://"+r.addrs["proxy"], "https://sluice.invalid/").CombinedOutput()
	if !strings.Contains(string(out), "403") || !strings.Contains(string(out), "onboarding page is plain HTTP") {
		t.Errorf("https://sluice.invalid/ through sluice:\n%s", out)
	}
	r.waitLog(`"reason":"sluice's onboarding page"`)
	// The start-up hint names the config sluice was started with.
	if !strings.Contains(r.log(), "sluice env -c '"+r.cfg+"'") {
		t.Errorf("the new CA's hint does not carry -c %s:\n%s", r.cfg, r.log())
	}
}

// TestOnboardingPageInChromium: a browser whose proxy is sluice opens
// http://sluice.invalid/ and finds the CA's fingerprint and its links.
func TestOnboardingPageInChromium(t *testing.T) {
	browser := testenv.RequireTool(t, "chromium")
	r := startRun(t, baseConfig("  a.test: {}\n"))
	block, _ := pem.Decode(readBytes(t, filepath.Join(r.dir, "data", "ca.pem")))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ctx := headless(t, browser, "http://"+r.addrs["proxy"])
	if err := chromedp.Do(ctx, chromedp.Navigate("http://sluice.invalid/"), chromedp.WaitVisible(chromedp.CSS("#pem"))); err != nil {
		t.Fatalf("chromium through sluice to http://sluice.invalid/: %v", err)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil || title != "Trust sluice's CA" {
		t.Errorf("title %q (%v)", title, err)
	}
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil || !strings.Contains(body, cert.Subject.CommonName) || !strings.Contains(body, "SHA-256") {
		t.Errorf("the page lacks the CA's name %q or its fingerprint (%v):\n%.600s", cert.Subject.CommonName, err, body)
	}
	for _, id := range []string{"pem", "der", "p12"} {
		href, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#"+id), "href"))
		if err != nil || href.Value != "/ca."+id {
			t.Errorf("link #%s: %q (%v)", id, href.Value, err)
		}
	}
	if os.Getenv("SLUICE_ARTIFACTS") != "" {
		if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(90)); err == nil {
			os.MkdirAll(os.Getenv("SLUICE_ARTIFACTS"), 0o755)
			os.WriteFile(filepath.Join(os.Getenv("SLUICE_ARTIFACTS"), "onboarding.jpg"), shot, 0o644)
		}
	}
}
