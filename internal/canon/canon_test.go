package canon

import (
	"errors"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestPath(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "/"},
		{"/", "/"},
		{"/api/v3/ticker", "/api/v3/ticker"},
		{"//sapi/v1/capital/withdraw/apply", "/sapi/v1/capital/withdraw/apply"},
		{"/sapi//v1/capital/withdraw/apply", "/sapi/v1/capital/withdraw/apply"},
		{"/sapi/v1/./capital/withdraw/apply", "/sapi/v1/capital/withdraw/apply"},
		{"/sapi/v1/x/../capital/withdraw/apply", "/sapi/v1/capital/withdraw/apply"},
		{"/sapi/v1/giftcard//createCode", "/sapi/v1/giftcard/createCode"},
		{"/%73api/v1/capital/%77ithdraw/apply", "/sapi/v1/capital/withdraw/apply"},
		{"/sapi/v1/%2e%2E/v1/capital", "/sapi/v1/capital"},
		{"/../../etc/passwd", "/etc/passwd"},
		{"/a/b/..", "/a/"},
		{"/a/b/.", "/a/b/"},
		{"/a/", "/a/"},
		{"/a%20b", "/a%20b"},
		{"/a%3ab", "/a%3Ab"},
		{"/a%25b", "/a%25b"},
		{"relative/x", "/relative/x"},
	} {
		got, err := Path(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Path(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00b", "/a%0ab", "/a%zz", "/a%4", "/a%", "/a\x00"} {
		if got, err := Path(bad); !errors.Is(err, ErrPath) {
			t.Errorf("Path(%q) = %q, %v; want an ErrPath", bad, got, err)
		}
	}
}

func TestRequestRewritesInPlace(t *testing.T) {
	r := httptest.NewRequest("GET", "http://x/a//%62/./c%20d?q=1", nil)
	if err := Request(r); err != nil {
		t.Fatal(err)
	}
	if r.URL.Path != "/a/b/c d" || r.URL.EscapedPath() != "/a/b/c%20d" || r.URL.RawQuery != "q=1" {
		t.Errorf("after Request: Path %q, EscapedPath %q, RawQuery %q", r.URL.Path, r.URL.EscapedPath(), r.URL.RawQuery)
	}
}

// lenient is how a permissive upstream may read a path: every escape
// decoded, "\" as "/", then path.Clean.
func lenient(escaped string) string {
	p, err := url.PathUnescape(escaped)
	if err != nil {
		return ""
	}
	return path.Clean("/" + strings.ReplaceAll(p, "\\", "/"))
}

var denyPrefixes = []string{"/sapi/v1/capital/withdraw", "/sapi/v1/giftcard/createcode"}

func denied(p string) bool {
	p = strings.ToLower(p)
	for _, d := range denyPrefixes {
		if strings.HasPrefix(p, d) {
			return true
		}
	}
	return false
}

func FuzzPath(f *testing.F) {
	for _, s := range []string{"/sapi/v1/capital/withdraw/apply", "//sapi/v1/capital/withdraw/apply", "/sapi/v1/x/../capital/withdraw/apply",
		"/sapi/v1/%2e/capital/withdraw", "/a%2Fb", "/SAPI/v1/capital/Withdraw/apply", "/%7e/", "/a/b/../../..", "/x%41"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := Path(raw)
		if err != nil {
			return
		}
		again, err := Path(c)
		if err != nil || again != c {
			t.Fatalf("not idempotent: Path(%q) = %q, Path(%q) = %q, %v", raw, c, c, again, err)
		}
		if !strings.HasPrefix(c, "/") || strings.Contains(c, "//") {
			t.Fatalf("Path(%q) = %q: not one leading slash", raw, c)
		}
		for seg := range strings.SplitSeq(c, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("Path(%q) = %q keeps a dot segment", raw, c)
			}
		}
		// A deny rule sees on the canonical path what a lenient upstream
		// would serve for the raw one.
		if lc := lenient(c); lc != "" && denied(lc) != denied(c) {
			t.Fatalf("Path(%q) = %q: deny rule says %v, the upstream reads %q", raw, c, denied(c), lc)
		}
		if lr := lenient(raw); lr != "" && denied(lr) && !denied(c) {
			t.Fatalf("raw %q reads as denied %q upstream, canonical %q is allowed", raw, lr, c)
		}
	})
}
