package vault

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"net/url"
	"strings"
)

// signer signs one exchange's requests the way its API documents.
type signer interface {
	// keyHeader is the header that carries the API key.
	keyHeader() string
	// sign replaces the key and the signature of r (its body is body) and
	// returns the body to forward.
	sign(r *http.Request, body []byte, k *Key) ([]byte, error)
}

func newSigner(exchange string, secret []byte) (signer, error) {
	switch exchange {
	case "binance":
		return binance{}, nil
	case "bybit":
		return bybit{}, nil
	case "kraken":
		// Kraken's secret is base64; an undecodable one would sign nothing right.
		if _, err := base64.StdEncoding.DecodeString(string(secret)); err != nil {
			return nil, fmt.Errorf("a Kraken API secret is base64: %w", err)
		}
		return kraken{}, nil
	}
	return nil, fmt.Errorf("sluice does not sign for %q", exchange)
}

func hmacHex(h func() hash.Hash, secret []byte, parts ...string) string {
	m := hmac.New(h, secret)
	for _, p := range parts {
		m.Write([]byte(p))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// binance: HMAC-SHA256 of the query string followed by the body, less the
// signature parameter, sent as the signature parameter where the client
// put it; the key in X-MBX-APIKEY.
// https://developers.binance.com/docs/binance-spot-api-docs/rest-api/endpoint-security-type
type binance struct{}

func (binance) keyHeader() string { return "X-MBX-APIKEY" }

func (binance) sign(r *http.Request, body []byte, k *Key) ([]byte, error) {
	r.Header.Set("X-MBX-APIKEY", string(k.key))
	query, inQuery := withoutParam(r.URL.RawQuery, "signature")
	form := isForm(r)
	b, inBody := string(body), false
	if form {
		b, inBody = withoutParam(b, "signature")
	}
	if !inQuery && !inBody {
		r.URL.RawQuery = query
		return body, nil // an endpoint that wants the key, not a signature
	}
	sig := hmacHex(sha256.New, k.secret, query, b)
	if inBody {
		r.URL.RawQuery = query
		return []byte(appendParam(b, "signature", sig)), nil
	}
	r.URL.RawQuery = appendParam(query, "signature", sig)
	return []byte(b), nil
}

// bybit (v5): HMAC-SHA256 of timestamp, key, recv window and the query
// string (GET) or the body (POST), hex, in X-BAPI-SIGN; the key in X-BAPI-API-KEY.
// https://bybit-exchange.github.io/docs/v5/guide#authentication
type bybit struct{}

func (bybit) keyHeader() string { return "X-Bapi-Api-Key" }

func (bybit) sign(r *http.Request, body []byte, k *Key) ([]byte, error) {
	ts := r.Header.Get("X-BAPI-TIMESTAMP")
	if ts == "" {
		return nil, errors.New("no X-BAPI-TIMESTAMP: a Bybit request is signed over its timestamp")
	}
	payload := string(body)
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		payload = r.URL.RawQuery
	}
	r.Header.Set("X-BAPI-API-KEY", string(k.key))
	r.Header.Set("X-BAPI-SIGN", hmacHex(sha256.New, k.secret, ts, string(k.key), r.Header.Get("X-BAPI-RECV-WINDOW"), payload))
	return body, nil
}

// kraken: HMAC-SHA512, keyed by the base64-decoded secret, of the URI
// path followed by SHA-256 of the nonce and the POST data, base64, in
// API-Sign; the key in API-Key.
// https://docs.kraken.com/api/docs/guides/spot-rest-auth
type kraken struct{}

func (kraken) keyHeader() string { return "Api-Key" }

func (kraken) sign(r *http.Request, body []byte, k *Key) ([]byte, error) {
	nonce, err := krakenNonce(r, body)
	if err != nil {
		return nil, err
	}
	secret, _ := base64.StdEncoding.DecodeString(string(k.secret)) // checked when compiled
	inner := sha256.Sum256(append([]byte(nonce), body...))
	m := hmac.New(sha512.New, secret)
	m.Write([]byte(r.URL.EscapedPath()))
	m.Write(inner[:])
	r.Header.Set("API-Key", string(k.key))
	r.Header.Set("API-Sign", base64.StdEncoding.EncodeToString(m.Sum(nil)))
	return body, nil
}

func krakenNonce(r *http.Request, body []byte) (string, error) {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var v struct {
			Nonce json.Number `json:"nonce"`
		}
		if json.Unmarshal(body, &v) == nil && v.Nonce != "" {
			return v.Nonce.String(), nil
		}
		return "", errors.New("no nonce in the JSON body: a Kraken request is signed over its nonce")
	}
	q, err := url.ParseQuery(string(body))
	if err != nil || q.Get("nonce") == "" {
		return "", errors.New("no nonce in the POST data: a Kraken request is signed over its nonce")
	}
	return q.Get("nonce"), nil
}

func isForm(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
}

// withoutParam removes every name= parameter from a raw query, leaving
// the others byte for byte, and reports whether there was one.
func withoutParam(raw, name string) (string, bool) {
	if raw == "" {
		return "", false
	}
	parts := strings.Split(raw, "&")
	kept := parts[:0]
	found := false
	for _, p := range parts {
		if n, _, _ := strings.Cut(p, "="); n == name {
			found = true
			continue
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, "&"), found
}

func appendParam(raw, name, value string) string {
	if raw == "" {
		return name + "=" + value
	}
	return raw + "&" + name + "=" + value
}
