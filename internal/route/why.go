package route

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"sluice/internal/canon"
	"sluice/internal/config"
	"sluice/internal/decision"
	"sluice/internal/filter"
	"sluice/internal/hostport"
	"sluice/internal/onboard"
)

// WhyQuery is a request to explain: a target and, optionally, a method,
// path and the client that would send it.
type WhyQuery struct {
	Target string `json:"target"` // HOST[:PORT]; port 80 means plain HTTP
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Client string `json:"client,omitempty"`
}

// WhyStep is what one stage of the pipeline does with the request.
type WhyStep struct {
	Stage   string `json:"stage"`
	Verdict string `json:"verdict"` // pass, refuses, answers, or note (a setting, not a decision)
	Detail  string `json:"detail"`
}

// WhyAnswer is the pipeline's decision on a WhyQuery, stage by stage.
type WhyAnswer struct {
	Target    string    `json:"target"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Allowed   bool      `json:"allowed"`
	Status    int       `json:"status"` // sluice's own answer when refused
	RefusedBy string    `json:"refused_by,omitempty"`
	Steps     []WhyStep `json:"steps"`
}

// Why is the table in force's answer to q, with the running ban list.
func (g *Gateway) Why(ctx context.Context, q WhyQuery) *WhyAnswer {
	return g.Table().Why(ctx, q, g.Deps.Bans)
}

// Why walks q through the stages of the table that decide on a
// request (canonical request, client identity, ban gate, onboarding,
// policy, grants, rules) as the pipeline would, and notes what the route
// then does with it (cache, budget). Nothing is dialed, counted or logged.
// Body rules are not checked: they read the body as it streams. bans nil:
// bans are not checked.
func (t *Table) Why(ctx context.Context, q WhyQuery, bans *filter.Bans) *WhyAnswer {
	a := &WhyAnswer{Method: strings.ToUpper(q.Method), Path: q.Path}
	if a.Method == "" {
		a.Method = http.MethodGet
	}
	if a.Path == "" {
		a.Path = "/"
	}
	step := func(stage, verdict, format string, args ...any) {
		a.Steps = append(a.Steps, WhyStep{stage, verdict, fmt.Sprintf(format, args...)})
	}
	refuse := func(stage string, status int, format string, args ...any) *WhyAnswer {
		step(stage, "refuses", format, args...)
		a.RefusedBy, a.Status = stage, status
		return a
	}

	target, err := hostport.Parse(q.Target, 443)
	if err != nil {
		a.Target = q.Target
		return refuse("canonical request", http.StatusBadRequest, "bad target: %v", err)
	}
	a.Target = target.String()
	scheme := decision.HTTPS
	if target.Port == 80 {
		scheme = decision.HTTP
	}
	rawPath, query, _ := strings.Cut(a.Path, "?")
	path, err := canon.Path(rawPath)
	if err != nil {
		return refuse("canonical request", http.StatusBadRequest, "bad path: %v", err)
	}
	a.Path = path
	if query != "" {
		a.Path += "?" + query
	}
	step("canonical request", "pass", "%s %s://%s%s", a.Method, scheme, target, a.Path)

	client := t.Vault.Client(q.Client)
	switch {
	case q.Client != "" && client == nil:
		return refuse("client identity", http.StatusProxyAuthRequired, "no client %q under clients: in the config", q.Client)
	case client != nil:
		step("client identity", "pass", "client %s", client.Name)
	case t.Vault.Certificates() || len(t.Config.Clients) > 0:
		step("client identity", "note", "clients: are named: the request must name one (proxy credentials, certificate or address) or gets 407; give --client NAME to check its grants")
	default:
		step("client identity", "pass", "no clients: are named; any client may ask")
	}

	if bans != nil && q.Client != "" {
		if ban, banned := bans.Banned(ctx, filter.ClientKey(q.Client)); banned {
			return refuse("ban gate", http.StatusForbidden, "client %s is banned until %s (%s); sluice bans rm %s lifts it", q.Client, ban.Until.Format("2006-01-02 15:04:05 MST"), ban.Reason, filter.ClientKey(q.Client))
		}
		step("ban gate", "pass", "client %s is not banned", q.Client)
	}

	if target.Host == onboard.Host {
		step("onboarding", "answers", "sluice serves its onboarding page here (http://%s/): the CA and how to trust it", onboard.Host)
		a.Allowed, a.Status = true, http.StatusOK
		return a
	}

	d := t.Policy.Decide(target, scheme)
	if d.Action == decision.Deny {
		return refuse("policy", http.StatusForbidden, "%s; %s", d.Reason, d.Fix)
	}
	entry := config.KeyPath("hosts", d.Entry.Key)
	if d.Report != "" {
		step("policy", "pass", "report mode lets it through (enforce would refuse it: %s; %s)", d.Report, d.Fix)
	} else {
		step("policy", "pass", "%s, by %s (profile %s)", d.Action, entry, profileOf(d.Entry.Host.Profile))
	}
	rt := t.routes[d.Rule()]
	if rt == nil {
		a.Allowed = true
		return a
	}

	if client != nil {
		if reason, detail := client.Refuses(target.Host, d.Rule(), a.Method, path, rt.Groups); reason != "" {
			return refuse("grants", http.StatusForbidden, "%s: %s", reason, detail)
		}
		step("grants", "pass", "client %s may send this to %s", client.Name, target.Host)
	}
	if d.Action == decision.Tunnel {
		step("CONNECT", "answers", "tunneled byte for byte: the requests inside are not read, cached or counted")
		a.Allowed, a.Status = true, http.StatusOK
		return a
	}

	r := &http.Request{Method: a.Method, URL: &url.URL{Path: path, RawQuery: query}, Header: http.Header{}, Host: target.Host}
	if rt.Rules != nil {
		if v := rt.Rules.CheckHead(r); v != nil {
			return refuse("rules", v.Status, "%s (rule set %s)", v.Error(), ruleSetOf(rt))
		}
		step("rules", "pass", "rule set %s allows %s %s (its body rules, if any, run on the body)", ruleSetOf(rt), a.Method, path)
	}
	step("cache", "note", "%s", rt.Cache.Describe(r))
	if specs := rt.Throttle.PickAll(r); len(specs) > 0 {
		names := make([]string, len(specs))
		for i, s := range specs {
			names[i] = fmt.Sprintf("%s (weight %g)", s.Name(), s.Cost(r))
		}
		step("throttle", "note", "a miss spends upstream budget %s", strings.Join(names, ", "))
	}
	a.Allowed = true
	return a
}

func profileOf(p string) string {
	if p == "" {
		return config.ProfileNone
	}
	return p
}

func ruleSetOf(rt *Route) string {
	if rt.Settings.RuleSet != "" {
		return rt.Settings.RuleSet
	}
	return "of the profile " + profileOf(rt.Settings.Profile)
}
