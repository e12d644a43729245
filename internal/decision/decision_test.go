package decision

import (
	"net/http/httptest"
	"testing"
)

func TestDecision(t *testing.T) {
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
		if got := tt.rec.Decision(); got != tt.want {
			t.Errorf("Decision() of %+v = %q, want %q", tt.rec, got, tt.want)
		}
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
