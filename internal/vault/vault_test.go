package vault

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sluice/internal/config"
)

// TestSignersMatchTheDocumentedExamples: the signatures are the ones the
// exchanges' own documentation gives for its example requests.
func TestSignersMatchTheDocumentedExamples(t *testing.T) {
	// https://developers.binance.com/docs/binance-spot-api-docs/rest-api/endpoint-security-type
	// (SIGNED endpoint examples for POST /api/v3/order, HMAC keys)
	query := "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
	k := &Key{key: []byte("vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"),
		secret: []byte("NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j")}
	r, _ := http.NewRequest(http.MethodPost, "https://api.binance.com/api/v3/order?"+query+"&signature=placeholder", nil)
	if _, err := (binance{}).sign(r, nil, k); err != nil {
		t.Fatal(err)
	}
	if want := query + "&signature=c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"; r.URL.RawQuery != want {
		t.Errorf("Binance example, query:\n%s\nwant\n%s", r.URL.RawQuery, want)
	}
	if r.Header.Get("X-MBX-APIKEY") != string(k.key) {
		t.Error("the real key is not in X-MBX-APIKEY")
	}
	// The same parameters in the body.
	r, _ = http.NewRequest(http.MethodPost, "https://api.binance.com/api/v3/order", nil)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	body, err := (binance{}).sign(r, []byte(query+"&signature=placeholder"), k)
	if err != nil || string(body) != query+"&signature=c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71" || r.URL.RawQuery != "" {
		t.Errorf("Binance example, body: %s (query %q) %v", body, r.URL.RawQuery, err)
	}

	// https://docs.kraken.com/api/docs/guides/spot-rest-auth (the example of API-Sign)
	kk := &Key{key: []byte("key"), secret: []byte("kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg==")}
	post := "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
	r, _ = http.NewRequest(http.MethodPost, "https://api.kraken.com/0/private/AddOrder", nil)
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if _, err := (kraken{}).sign(r, []byte(post), kk); err != nil {
		t.Fatal(err)
	}
	if got, want := r.Header.Get("API-Sign"), "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="; got != want {
		t.Errorf("Kraken example: API-Sign %s, want %s", got, want)
	}
}

func TestGroups(t *testing.T) {
	ps, err := config.Profiles()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ profile, method, path, want string }{
		{"binance", "POST", "/sapi/v1/capital/withdraw/apply", "withdraw"},
		{"binance", "POST", "/SAPI/v1/Capital/Withdraw/apply", "withdraw"},
		{"binance", "POST", "/api/v3/order", "trade"},
		{"binance", "DELETE", "/api/v3/order", "trade"},
		{"binance", "GET", "/api/v3/order", "read"},
		{"binance", "GET", "/api/v3/account", "read"},
		{"binance", "POST", "/api/v3/userDataStream", "read"},
		{"binance", "POST", "/sapi/v1/asset/dust", ""},
		{"binance", "POST", "/fapi/v1/leverage", "leverage"},
		{"binance", "POST", "/fapi/v1/marginType", "leverage"},
		{"binance", "POST", "/fapi/v1/order", "trade"},
		{"bybit", "POST", "/v5/order/create", "trade"},
		{"bybit", "POST", "/v5/position/set-leverage", "leverage"},
		{"bybit", "POST", "/v5/position/trading-stop", "trade"},
		{"bybit", "POST", "/v5/asset/withdraw/create", "withdraw"},
		{"bybit", "GET", "/v5/account/wallet-balance", "read"},
		{"kraken", "POST", "/0/private/AddOrder", "trade"},
		{"kraken", "POST", "/0/private/Balance", "read"},
		{"kraken", "POST", "/0/private/Withdraw", "withdraw"},
		{"", "POST", "/anything", "trade"},
		{"", "GET", "/anything", "read"},
	} {
		var gs Groups = DefaultGroups
		if tc.profile != "" {
			if gs, err = CompileGroups(ps[tc.profile].Groups); err != nil {
				t.Fatal(err)
			}
		}
		if got := gs.Of(tc.method, tc.path); got != tc.want {
			t.Errorf("%s %s %s: group %q, want %q", tc.profile, tc.method, tc.path, got, tc.want)
		}
	}
}

// TestCompileRefusesLooseSecrets: a key file others can read, a missing
// environment variable and a key equal to its placeholder are refused
// with the key path that names them.
func TestCompileRefusesLooseSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("loose.key", "k", 0o644)
	write("ok.key", "k", 0o600)
	write("ok.secret", "s", 0o600)
	write("placeholder.key", "sluice", 0o600)
	client := map[string]*config.Client{"bot": {PasswordFile: "ok.secret", Hosts: []string{"api.binance.com"}}}
	for _, tc := range []struct {
		key  config.Key
		want string
	}{
		{config.Key{Exchange: "binance", KeyFile: "loose.key", SecretFile: "ok.secret", Placeholder: "sluice"}, "keys.k.key: " + filepath.Join(dir, "loose.key") + " is readable by others (mode 0644)"},
		{config.Key{Exchange: "binance", KeyFile: "ok.key", SecretEnv: "SLUICE_TEST_UNSET_VARIABLE", Placeholder: "sluice"}, "keys.k.secret: environment variable SLUICE_TEST_UNSET_VARIABLE is not set"},
		{config.Key{Exchange: "binance", KeyFile: "placeholder.key", SecretFile: "ok.secret", Placeholder: "sluice"}, "keys.k: the key is its own placeholder"},
		{config.Key{Exchange: "kraken", KeyFile: "ok.key", SecretFile: "ok.secret", Placeholder: "sluice"}, "keys.k.secret: a Kraken API secret is base64"},
	} {
		cfg := &config.Config{Dir: dir, Keys: map[string]*config.Key{"k": &tc.key}, Clients: client}
		if _, err := Compile(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compile: %v\nwant %s", err, tc.want)
		}
	}
	if _, err := Compile(&config.Config{Dir: dir, Keys: map[string]*config.Key{"k": {Exchange: "binance"}}}); err == nil {
		t.Error("keys without clients: no error")
	}
}
