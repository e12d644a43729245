package policy

import (
	"testing"

	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/hostport"
)

func TestDecide(t *testing.T) {
	cfg, err := config.Parse([]byte(`
hosts:
  api.binance.com: {}
  "*.myshopify.com": {}
  "*.eu.myshopify.com": {mode: tunnel}
  github.com: {mode: tunnel}
  blocked.test: {mode: deny}
  deb.debian.org: {plain_http: true}
  alt.test: {ports: [8443]}
`), "t.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(cfg.Hosts, false, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, target string
		scheme       decision.Scheme
		want         decision.Action
		rule         string
	}{
		{"exact host", "api.binance.com:443", decision.HTTPS, decision.Intercept, "api.binance.com"},
		{"wildcard", "shop1.myshopify.com:443", decision.HTTPS, decision.Intercept, "*.myshopify.com"},
		{"wildcard, deeper", "a.b.myshopify.com:443", decision.HTTPS, decision.Intercept, "*.myshopify.com"},
		{"longest wildcard wins", "x.eu.myshopify.com:443", decision.HTTPS, decision.Tunnel, "*.eu.myshopify.com"},
		{"wildcard excludes the apex", "myshopify.com:443", decision.HTTPS, decision.Deny, ""},
		{"suffix is not a label boundary", "evilmyshopify.com:443", decision.HTTPS, decision.Deny, ""},
		{"tunnel", "github.com:443", decision.HTTPS, decision.Tunnel, "github.com"},
		{"deny entry", "blocked.test:443", decision.HTTPS, decision.Deny, "blocked.test"},
		{"unlisted", "evil.test:443", decision.HTTPS, decision.Deny, ""},
		{"wrong port", "api.binance.com:8443", decision.HTTPS, decision.Deny, "api.binance.com"},
		{"custom port", "alt.test:8443", decision.HTTPS, decision.Intercept, "alt.test"},
		{"custom port replaces 443", "alt.test:443", decision.HTTPS, decision.Deny, "alt.test"},
		{"plain http allowed", "deb.debian.org:80", decision.HTTP, decision.Intercept, "deb.debian.org"},
		{"plain http not allowed", "api.binance.com:443", decision.HTTP, decision.Deny, "api.binance.com"},
		{"metadata IP", "169.254.169.254:80", decision.HTTP, decision.Deny, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hp, err := hostport.Parse(tt.target, 0)
			if err != nil {
				t.Fatal(err)
			}
			d := p.Decide(hp, tt.scheme)
			if d.Action != tt.want || d.Rule() != tt.rule {
				t.Errorf("Decide(%q) = %v by %q (%s), want %v by %q", tt.target, d.Action, d.Rule(), d.Reason, tt.want, tt.rule)
			}
			if d.Action == decision.Deny && (d.Reason == "" || d.Fix == "") {
				t.Errorf("Decide(%q) denied without reason %q or fix %q", tt.target, d.Reason, d.Fix)
			}
		})
	}
}

// TestDecideReport: report mode turns every refusal but an entry's own
// mode: deny into a tunnel that says why enforce refused it; what enforce
// allows is decided the same.
func TestDecideReport(t *testing.T) {
	cfg, err := config.Parse([]byte(`
hosts:
  api.binance.com: {}
  github.com: {mode: tunnel}
  blocked.test: {mode: deny}
  "*.corp.test": {mode: report}
`), "t.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	enforce, err := New(cfg.Hosts, false, false)
	if err != nil {
		t.Fatal(err)
	}
	report, err := New(cfg.Hosts, false, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		target string
		scheme decision.Scheme
	}{
		{"api.binance.com:443", decision.HTTPS}, {"github.com:443", decision.HTTPS}, {"blocked.test:443", decision.HTTPS},
		{"evil.test:443", decision.HTTPS}, {"api.binance.com:8443", decision.HTTPS}, {"api.binance.com:80", decision.HTTP},
		{"a.corp.test:443", decision.HTTPS}, {"a.corp.test:9000", decision.HTTP},
	} {
		hp, _ := hostport.Parse(tt.target, 0)
		e, r := enforce.Decide(hp, tt.scheme), report.Decide(hp, tt.scheme)
		corp := hp.Host == "a.corp.test" // mode: report, in either policy
		switch {
		case e.Action != decision.Deny && !corp:
			if r.Action != e.Action || r.Report != "" {
				t.Errorf("%s: report mode changed an allowed decision: %v %q -> %v %q", tt.target, e.Action, e.Reason, r.Action, r.Report)
			}
		case hp.Host == "blocked.test":
			if r.Action != decision.Deny {
				t.Errorf("%s: mode: deny let through in report mode (%v)", tt.target, r.Action)
			}
		default:
			if r.Action != decision.Tunnel || r.Report == "" || r.Fix == "" {
				t.Errorf("%s: report mode gave %v, report %q, fix %q; want a tunnel saying why enforce refuses it", tt.target, r.Action, r.Report, r.Fix)
			}
			if corp && (e.Action != decision.Tunnel || e.Report != "host in report mode") {
				t.Errorf("%s: a mode: report entry under policy enforce gave %v %q", tt.target, e.Action, e.Report)
			}
		}
	}
	unlisted, _ := hostport.Parse("evil.test:443", 0)
	if d := report.Decide(unlisted, decision.HTTPS); d.Rule() != ReportRule || d.Report != "host not listed" {
		t.Errorf("an unlisted host in report mode: rule %q, report %q", d.Rule(), d.Report)
	}
}
