package filter

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sluice/internal/config"
	"sluice/internal/store"
)

func rulesFrom(t testing.TB, yamlSet string) *Rules {
	t.Helper()
	cfg, err := config.Parse([]byte("rule_sets:\n  test:\n"+yamlSet+"hosts: {}\n"), "t.yaml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Compile("test", cfg.RuleSets["test"])
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const eosioLike = `    methods: [GET, POST]
    allow_paths: [{prefix: /v1/chain/}, {exact: /health}]
    deny_paths: [{exact: /v1/chain/push_block}, {regex: '^/v1/chain/.*_debug$', methods: [POST]}]
    max_body_bytes: 1000
    max_header_bytes: 2000
    max_headers: 20
    json_max_depth: 5
    require_headers: [X-Api-Client]
    forbid_headers: [X-Debug]
    deny_query: [{param: account, pattern: '^eosio\.'}]
    deny_json: [{path: 'actions[].account', values: [eosio.token, badcontract]}, {path: 'actions[].code', values: [badcontract]}]
`

func TestRules(t *testing.T) {
	r := rulesFrom(t, eosioLike)
	for _, tt := range []struct {
		name, method, target, body string
		hdr                        map[string]string
		check                      string // "" allowed
	}{
		{"allowed", "POST", "/v1/chain/push_transaction", `{"actions":[{"account":"alice","code":"x"}]}`, nil, ""},
		{"method", "DELETE", "/v1/chain/x", "", nil, "method"},
		{"not an allowed path", "GET", "/v2/other", "", nil, "path"},
		{"denied path", "GET", "/v1/chain/push_block", "", nil, "path"},
		{"denied path for POST only", "POST", "/v1/chain/get_debug", "", nil, "path"},
		{"same path by GET", "GET", "/v1/chain/get_debug", "", nil, ""},
		{"missing header", "GET", "/health", "", map[string]string{"X-Api-Client": ""}, "required_header"},
		{"forbidden header", "GET", "/health", "", map[string]string{"X-Debug": "1"}, "forbidden_header"},
		{"too many headers", "GET", "/health", "", manyHeaders(25), "header_count"},
		{"header bytes", "GET", "/health", "", map[string]string{"X-Big": strings.Repeat("a", 2500)}, "header_bytes"},
		{"query", "GET", "/v1/chain/get_account?account=eosio.token", "", nil, "query"},
		{"body too large", "POST", "/v1/chain/push_transaction", `{"a":"` + strings.Repeat("x", 1200) + `"}`, nil, "body_bytes"},
		{"invalid JSON", "POST", "/v1/chain/push_transaction", `{"actions":[`, nil, "json"},
		{"too deep", "POST", "/v1/chain/push_transaction", `{"a":[[[[[[1]]]]]]}`, nil, "json_depth"},
		{"denied account", "POST", "/v1/chain/push_transaction", `{"actions":[{"account":"alice"},{"account":"eosio.token"}]}`, nil, "json_value"},
		{"denied code", "POST", "/v1/chain/push_transaction", `{"actions":[{"code":"badcontract"}]}`, nil, "json_value"},
		{"list of transactions", "POST", "/v1/chain/push_transactions", `[{"actions":[{"account":"ok"}]},{"actions":[{"account":"badcontract"}]}]`, nil, "json_value"},
		// Framing must not dodge the JSON rules.
		{"JSON labelled text/plain", "POST", "/v1/chain/push_transaction", `{"actions":[{"account":"eosio.token"}]}`, map[string]string{"Content-Type": "text/plain"}, "json_value"},
		{"JSON without a type", "POST", "/v1/chain/push_transaction", ` [{"actions":[{"account":"eosio.token"}]}]`, map[string]string{"Content-Type": ""}, "json_value"},
		{"JSON labelled a form", "POST", "/v1/chain/push_transaction", `{"actions":[{"code":"badcontract"}]}`, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "json_value"},
		{"duplicate key", "POST", "/v1/chain/push_transaction", `{"actions":[{"account":"alice","account":"eosio.token"}]}`, nil, "json_duplicate_key"},
		{"duplicate key by case", "POST", "/v1/chain/push_transaction", `{"actions":[{"account":"alice"}],"Actions":[]}`, nil, "json_duplicate_key"},
		{"key names ignore case", "POST", "/v1/chain/push_transaction", `{"Actions":[{"ACCOUNT":"eosio.token"}]}`, nil, "json_value"},
		{"same key in two objects", "POST", "/v1/chain/push_transaction", `{"actions":[{"account":"a"},{"account":"b"}],"x":{"account":"c"}}`, nil, ""},
		{"a form body is not JSON", "POST", "/v1/chain/push_transaction", `account=eosio.token`, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://node.test"+tt.target, strings.NewReader(tt.body))
			req.Header.Set("X-Api-Client", "bot")
			if tt.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			for k, v := range tt.hdr {
				if v == "" {
					req.Header.Del(k)
				} else {
					req.Header.Set(k, v)
				}
			}
			v := r.CheckHead(req)
			if v == nil {
				var err error
				if v, err = r.CheckBody(req); err != nil {
					t.Fatal(err)
				}
			}
			got := ""
			if v != nil {
				got = v.Check
				if !slices.Contains(r.Checks(), got) {
					t.Errorf("violation of %q, which the rule set's Checks %v leave out (no series before it)", got, r.Checks())
				}
			}
			if got != tt.check {
				t.Errorf("%s %s: violation %q (%v), want %q", tt.method, tt.target, got, v, tt.check)
			}
			if v == nil && tt.body != "" {
				if b, _ := io.ReadAll(req.Body); string(b) != tt.body {
					t.Errorf("the checked body was not passed on whole: %q", b)
				}
			}
		})
	}
}

func manyHeaders(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m["X-H"+strings.Repeat("x", i)] = "1"
	}
	return m
}

// TestStreamingBodyCutOff: a body without JSON checks streams, and is cut
// off past max_body_bytes whatever its Content-Length said.
func TestStreamingBodyCutOff(t *testing.T) {
	r := rulesFrom(t, "    max_body_bytes: 100\n")
	req := httptest.NewRequest("POST", "http://x/upload", strings.NewReader(strings.Repeat("z", 500)))
	req.ContentLength = 50 // lies
	if v := r.CheckHead(req); v != nil {
		t.Fatalf("head: %v", v)
	}
	if v, err := r.CheckBody(req); v != nil || err != nil {
		t.Fatalf("body: %v %v", v, err)
	}
	n, err := io.Copy(io.Discard, req.Body)
	if !errors.Is(err, errTooLarge) || n > 100 {
		t.Errorf("read %d bytes, err %v; want a cut-off at 100", n, err)
	}
}

func TestBansThresholdExpiryPersistence(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	path := filepath.Join(t.TempDir(), "bans.json")
	var lists []*store.MemoryBans
	open := func() *Bans {
		list, err := store.OpenBans(path, slog.New(slog.DiscardHandler), clock)
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewBans(list, slog.New(slog.DiscardHandler), clock, nil, 64)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(list.Flush)
		lists = append(lists, list)
		return b
	}
	ctx := t.Context()
	b := open()
	r := rulesFrom(t, "    methods: [GET]\n    ban: {violations: 3, window: 1m, duration: 10m}\n")
	v := &Violation{Check: "method"}
	b.Strike(ctx, "10.0.0.1", r, v)
	now = now.Add(2 * time.Minute) // the first strike leaves the window
	b.Strike(ctx, "10.0.0.1", r, v)
	if b.Strike(ctx, "10.0.0.1", r, v) {
		t.Fatal("banned after 2 strikes within the window (one was older)")
	}
	if !b.Strike(ctx, "10.0.0.1", r, v) {
		t.Fatal("not banned after 3 strikes within one minute")
	}
	if _, ok := b.Banned(ctx, "10.0.0.1"); !ok {
		t.Fatal("Banned = false right after the ban")
	}
	if _, ok := b.Banned(ctx, "10.0.0.2"); ok {
		t.Error("another client is banned")
	}
	lists[0].Flush() // as sluice does when it stops
	b2 := open()
	if _, ok := b2.Banned(ctx, "10.0.0.1"); !ok {
		t.Error("the ban did not survive a restart")
	}
	now = now.Add(11 * time.Minute)
	if _, ok := b2.Banned(ctx, "10.0.0.1"); ok {
		t.Error("the ban did not expire")
	}
}

// FuzzCheck: no request makes the checks panic, the JSON depth check
// agrees with encoding/json on validity, and a body that passes is
// forwarded unchanged.
func FuzzCheck(f *testing.F) {
	r := rulesFrom(f, eosioLike)
	f.Add("POST", "/v1/chain/push_transaction", `{"actions":[{"account":"eosio.token"}]}`)
	f.Add("GET", "/v1/chain/get_info?account=eosio.x", "")
	f.Add("POST", "/v1/chain/x", `[[[[[[[[]]]]]]]]`)
	f.Add("POST", "/v1/chain/x", `{"actions":"notalist"}`)
	f.Fuzz(func(t *testing.T, method, target, body string) {
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n#") || method == "" || strings.ContainsAny(method, " \r\n") {
			return
		}
		req, err := http.NewRequest(method, "http://node.test"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Api-Client", "fuzz")
		if v := r.CheckHead(req); v != nil {
			return
		}
		v, err := r.CheckBody(req)
		if err != nil {
			t.Fatal(err)
		}
		if v == nil {
			if !json.Valid([]byte(body)) && body != "" {
				t.Fatalf("invalid JSON %q passed", body)
			}
			if got, _ := io.ReadAll(req.Body); string(got) != body {
				t.Fatalf("body changed: %q -> %q", body, got)
			}
		}
	})
}

func TestEOSIOProfile(t *testing.T) {
	if n, _ := eosioName("eosio.token"); n != 6138663591592764928 {
		t.Fatalf("eosioName(eosio.token) = %d, want 6138663591592764928", n)
	}
	ps, _ := config.Profiles()
	r, err := Compile("eosio", ps["eosio"].Rules)
	if err != nil {
		t.Fatal(err)
	}
	msig, _ := eosioName("eosio.msig")
	var le [8]byte
	binary.LittleEndian.PutUint64(le[:], msig)
	packed := "00000000" + hex.EncodeToString(le[:]) + "0000"
	tx := func(actions string) string { return `{"signatures":["SIG_K1_x"],"actions":[` + actions + `]}` }
	for _, tt := range []struct{ name, body, check string }{
		{"plain transfer", tx(`{"account":"eosio.token","name":"transfer","data":"00"}`), ""},
		{"denied as code", tx(`{"code":"eosio.msig","name":"propose"}`), "json_value"},
		{"denied as account (the old hole)", tx(`{"account":"eosio.msig","name":"propose"}`), "json_value"},
		{"denied inside packed_trx (the other hole)", `{"signatures":[],"compression":"none","packed_trx":"` + packed + `"}`, "json_value"},
		{"too many transactions", "[" + strings.Repeat(tx(`{"account":"a"}`)+",", 10) + tx(`{"account":"a"}`) + "]", "json_limit"},
		{"too many signatures", `{"signatures":["a","b","c","d","e"],"actions":[]}`, "json_limit"},
		{"action data too big", tx(`{"account":"a","data":"` + strings.Repeat("ab", 40000) + `"}`), "json_limit"},
		{"not an object or list", `"just a string"`, "json_root"},
		{"not JSON", `actions=1`, "json"},
	} {
		req := httptest.NewRequest("POST", "http://node.test/v1/chain/push_transaction", strings.NewReader(tt.body))
		req.Header.Set("Content-Type", "text/plain") // the checks do not depend on the label
		v := r.CheckHead(req)
		if v == nil {
			v, _ = r.CheckBody(req)
		}
		got := ""
		if v != nil {
			got = v.Check
			if !slices.Contains(r.Checks(), got) {
				t.Errorf("violation of %q, which the rule set's Checks %v leave out (no series before it)", got, r.Checks())
			}
		}
		if got != tt.check {
			t.Errorf("%s: violation %q (%v), want %q", tt.name, got, v, tt.check)
		}
	}
	if !r.EOSIOAnswer {
		t.Errorf("answer: eosio compiled to EOSIOAnswer = false")
	}
}

// TestBansIPv6ByPrefix: IPv6 clients are counted and banned by their /64,
// so a host cannot dodge a ban by moving to the next address of its prefix.
func TestBansIPv6ByPrefix(t *testing.T) {
	list, err := store.OpenBans("", slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBans(list, slog.New(slog.DiscardHandler), nil, nil, 64)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	r := rulesFrom(t, "    methods: [GET]\n    ban: {violations: 2, window: 1m, duration: 10m}\n")
	v := &Violation{Check: "method"}
	b.Strike(ctx, "2001:db8:1:2::1", r, v)
	if !b.Strike(ctx, "2001:db8:1:2::99", r, v) {
		t.Fatal("two violations from one /64 did not ban it")
	}
	for client, want := range map[string]bool{"2001:db8:1:2::ffff": true, "2001:db8:1:3::1": false, "192.0.2.1": false, "::ffff:192.0.2.1": false} {
		if _, got := b.Banned(ctx, client); got != want {
			t.Errorf("Banned(%s) = %v, want %v", client, got, want)
		}
	}
	if lifted, _ := b.Remove(ctx, "2001:db8:1:2::5"); !lifted {
		t.Error("Remove by an address of the banned /64 lifted nothing")
	}
}

// FuzzScanJSON: the JSON reader the rules use never panics, accepts every
// valid document, and says how deep a container nests.
func FuzzScanJSON(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":1,"A":2}`, `[{"a":[1,{"b":2}]},{"a":3}]`, `{"a":{"a":{"a":1}}}`, `{"x":"\u0041"}`, `[`, `{"a"}`, `1 2`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		depth, dup, err := scanJSON(body)
		if !json.Valid(body) {
			return
		}
		if err != nil {
			t.Fatalf("scanJSON(%q) refused a valid document: %v", body, err)
		}
		trimmed := bytes.TrimSpace(body)
		if container := trimmed[0] == '{' || trimmed[0] == '['; container != (depth >= 1) {
			t.Fatalf("scanJSON(%q) depth %d", body, depth)
		}
		if dup != "" && !bytes.ContainsRune(body, '\\') && !bytes.Contains(bytes.ToLower(body), []byte(strings.ToLower(dup))) {
			t.Fatalf("scanJSON(%q) names a duplicate %q that is not in it", body, dup)
		}
	})
}

// TestBanKeys: a client is banned under one spelling of its address: an
// IPv4 address as it is, an IPv4-mapped IPv6 one as IPv4, IPv6 by its
// /64, and anything else (a client's name) as it is.
func TestBanKeys(t *testing.T) {
	b, err := NewBans(nil, slog.New(slog.DiscardHandler), nil, nil, 64)
	if err != nil {
		t.Fatal(err)
	}
	for client, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:DB8:1:2::9":      "2001:db8:1:2::/64",
		"bot-7":                "bot-7",
		"0177.0.0.1":           "0177.0.0.1", // not an address netip reads: a name
	} {
		if got := b.key(client); got != want {
			t.Errorf("key(%q) = %q, want %q", client, got, want)
		}
	}
}
