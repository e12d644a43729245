package decision

import (
	"errors"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"sluice/internal/hostport"
)

func TestOutcome(t *testing.T) {
	for _, tt := range []struct {
		rec  Record
		want string
	}{
		{Record{Action: Intercept}, "intercept"},
		{Record{Action: Tunnel}, "tunnel"},
		{Record{Action: Reverse}, "reverse"},
		{Record{Action: Intercept, RefusedBy: Rules}, "deny"},
		{Record{Action: Intercept, RefusedBy: Budget}, "intercept"}, // the upstream was allowed; its budget was not there
		{Record{RefusedBy: Ban}, "deny"},
		{Record{RefusedBy: Canon}, "deny"},
		{Record{}, "none"},
	} {
		if got := tt.rec.Outcome().String(); got != tt.want {
			t.Errorf("Outcome() of %+v = %q, want %q", tt.rec, got, tt.want)
		}
	}
}

func TestTargetAddrFollowsTarget(t *testing.T) {
	rec := &Record{Target: hostport.HostPort{Host: "api.binance.com", Port: 443}}
	if got := rec.TargetAddr(); got != "api.binance.com:443" {
		t.Errorf("TargetAddr() = %q", got)
	}
	rec.Target = hostport.HostPort{Host: "2001:db8::1", Port: 8443}
	if got := rec.TargetAddr(); got != "[2001:db8::1]:8443" {
		t.Errorf("TargetAddr() after the target changed = %q", got)
	}
	rec.SetTarget(hostport.HostPort{Host: "api.test", Port: 443}, "api.test:443")
	if got := rec.TargetAddr(); got != "api.test:443" || rec.Target.Host != "api.test" {
		t.Errorf("TargetAddr() after SetTarget = %q (target %v)", got, rec.Target)
	}
	rec.Target.Port = 8443 // a later stage that changes Target is followed
	if got := rec.TargetAddr(); got != "api.test:8443" {
		t.Errorf("TargetAddr() after the target changed again = %q", got)
	}
}

func TestDetachKeepsTheRecordApart(t *testing.T) {
	r := httptest.NewRequest("GET", "http://x/", nil)
	rec := &Record{ClientIP: "198.51.100.7", Rule: "x", Status: 200, UpstreamAddr: "a"}
	ctx := With(r.Context(), rec)
	dctx, cp := Detach(ctx)
	if From(dctx) != cp || cp == rec || cp.ClientIP != "198.51.100.7" || cp.Rule != "x" || cp.Status != 0 || cp.UpstreamAddr != "" {
		t.Errorf("Detach: %+v", cp)
	}
	if ClientIP(r.WithContext(ctx)) != "198.51.100.7" || ClientIP(r) != "192.0.2.1" {
		t.Errorf("ClientIP: %q, %q", ClientIP(r.WithContext(ctx)), ClientIP(r))
	}
}

// TestReport: what a fill's stages recorded reaches the leader's record
// whole, and a request that joined the fill gets the refusal and error
// but not the upstream or budget it did not spend.
func TestReport(t *testing.T) {
	fill := &Record{RefusedBy: Budget, Reason: "upstream budget exhausted", Err: errors.New("no budget within max_wait"),
		UpstreamAddr: "192.0.2.1:443", Budget: "weight", Waited: time.Second}
	leader, joined := &Record{Cache: Miss}, &Record{Cache: Miss}
	leader.Report(fill, true)
	joined.Report(fill, false)
	want := Record{Cache: Miss, RefusedBy: Budget, Reason: fill.Reason, Err: fill.Err, UpstreamAddr: fill.UpstreamAddr, Budget: "weight", Waited: time.Second}
	if !reflect.DeepEqual(*leader, want) {
		t.Errorf("leader after Report: %+v, want %+v", *leader, want)
	}
	want.UpstreamAddr, want.Budget, want.Waited = "", "", 0
	if !reflect.DeepEqual(*joined, want) {
		t.Errorf("joined request after Report: %+v, want %+v", *joined, want)
	}
}
