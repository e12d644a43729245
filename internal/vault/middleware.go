package vault

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"sluice/internal/decision"
	"sluice/internal/metrics"
	"sluice/internal/obs"
)

// Metrics are the vault's counters, shared by every config.
type Metrics struct {
	requests *prometheus.CounterVec
	signed   *prometheus.CounterVec
}

// NewMetrics registers the vault's counters on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "client", Name: "requests_total",
			Help: "Requests by the client (from clients:) that made them."}, []string{"client"}),
		signed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sluice", Subsystem: "vault", Name: "signed_total",
			Help: "Requests sluice signed with a vault key, by key and outcome: signed, failed (not signable: no timestamp, nonce, ...)."}, []string{"key", "outcome"}),
	}
	return m, metrics.Register(reg, m.requests, m.signed)
}

// Declare creates the series of v's clients and keys at zero.
func (m *Metrics) Declare(v *Vault) {
	if v == nil {
		return
	}
	for _, c := range v.clients {
		m.requests.WithLabelValues(c.Name)
		for _, k := range c.keys {
			m.signed.WithLabelValues(k.Name, "signed")
			m.signed.WithLabelValues(k.Name, "failed")
		}
	}
}

// Identify is the identity stage: it names the request's client from its
// Proxy-Authorization (Basic NAME:PASSWORD), its certificate from sluice's
// CA, or its address, and refuses one that names none (407, with a
// challenge where the client can answer one). A request inside an
// intercepted connection is its CONNECT's client. The reverse listener's
// callers are not bots: they are not asked. Proxy-Authorization never
// goes further.
//
// failed (nil: nothing) is told of each request whose credentials were wrong.
func Identify(m *Metrics, of func(*http.Request) *Vault, failed func(*http.Request)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v := of(r)
			rec := decision.From(r.Context())
			auth := r.Header.Get("Proxy-Authorization")
			r.Header.Del("Proxy-Authorization")
			if v == nil || rec.Entry == decision.EntryReverse {
				next.ServeHTTP(w, r)
				return
			}
			if rec.Client == "" {
				c, why := v.identify(r, rec, auth)
				if c == nil && rec.Entry == decision.EntryTransparentTLS {
					// It may still prove who it is with a certificate in the
					// handshake sluice terminates; Grants refuses it if sluice
					// would not (a tunneled host).
					next.ServeHTTP(w, r)
					return
				}
				if c == nil {
					if auth != "" && failed != nil {
						failed(r)
					}
					refuseIdentity(w, r, rec, why)
					return
				}
				rec.Client = c.Name
			}
			m.requests.WithLabelValues(rec.Client).Inc()
			next.ServeHTTP(w, r)
		})
	}
}

func (v *Vault) identify(r *http.Request, rec *decision.Record, auth string) (*Client, string) {
	if auth != "" {
		scheme, cred, _ := strings.Cut(auth, " ")
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
		name, pass, ok := strings.Cut(string(raw), ":")
		if !strings.EqualFold(scheme, "Basic") || err != nil || !ok {
			return nil, "Proxy-Authorization is not Basic NAME:PASSWORD"
		}
		c := v.clients[name]
		sum := sha256.Sum256([]byte(pass))
		if c == nil || !c.hasPass || subtle.ConstantTimeCompare(sum[:], c.password[:]) != 1 {
			return nil, "wrong client name or password"
		}
		return c, ""
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		if c := v.clients[r.TLS.VerifiedChains[0][0].Subject.CommonName]; c != nil && c.cert {
			return c, ""
		}
		return nil, "the client certificate names no client with certificate: true"
	}
	if a, err := netip.ParseAddr(rec.ClientIP); err == nil {
		a = a.Unmap()
		for _, ac := range v.byAddr {
			if ac.prefix.Contains(a) {
				return ac.client, ""
			}
		}
	}
	return nil, "no proxy credentials, and the address is no client's"
}

func refuseIdentity(w http.ResponseWriter, r *http.Request, rec *decision.Record, why string) {
	rec.Refuse(decision.Identity, "unknown client: "+why)
	// Inside a tunnel, or to a client that does not know it talks to a
	// proxy, a challenge means nothing: only a certificate or the address can name it.
	status, how := http.StatusForbidden, "present a client certificate from sluice's CA (sluice clients cert NAME), or connect from an address under clients.NAME.addresses"
	if rec.Entry == decision.EntryForward || rec.Entry == decision.EntryConnect {
		status, how = http.StatusProxyAuthRequired, "send Proxy-Authorization: Basic NAME:PASSWORD (a proxy URL http://NAME:PASSWORD@host:port)"
		w.Header().Set("Proxy-Authenticate", `Basic realm="sluice"`)
	}
	obs.WriteError(w, r, &obs.Error{Status: status, Msg: "unknown client", Host: rec.Target.String(),
		Detail: why + "; sluice serves only the clients its config names (clients:): " + how})
}

// Grants is the grants stage: a named client reaches only its hosts,
// calls only its granted endpoint groups (of the route's profile, groups
// returns them), and where sluice holds its key for the host, sends the
// placeholder, never a real key.
func Grants(of func(*http.Request) (*Vault, Groups)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, groups := of(r)
			rec := decision.From(r.Context())
			c := v.Client(rec.Client)
			if c == nil && v != nil && rec.Entry == decision.EntryTransparentTLS && rec.Action != decision.Intercept {
				// Only an intercepted connection can name its client by
				// certificate after the fact.
				refuseIdentity(w, r, rec, "no client certificate can name it on a tunneled host, and the address is no client's")
				return
			}
			if c == nil {
				next.ServeHTTP(w, r)
				return
			}
			host := rec.Target.Host
			if reason, detail := c.Refuses(host, rec.Rule, r.Method, r.URL.Path, groups); reason != "" {
				refuseGrant(w, r, rec, reason, detail)
				return
			}
			if r.Method == http.MethodConnect {
				next.ServeHTTP(w, r) // each request inside is checked on its own
				return
			}
			if k := c.keys[host]; k != nil {
				if sent := r.Header.Get(k.signer.keyHeader()); sent != "" && sent != k.Placeholder {
					refuseGrant(w, r, rec, "real key sent", fmt.Sprintf("sluice holds client %s's key for %s (keys.%s): the bot must send the API key %q, not a key of its own", c.Name, host, k.Name, k.Placeholder))
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// Refuses says why c's grants refuse method and path on host (matched by
// the host entry rule), and what to change; "" when they allow it. A
// CONNECT is checked for its host only: each request inside is checked on
// its own.
func (c *Client) Refuses(host, rule, method, path string, groups Groups) (reason, detail string) {
	if !slices.Contains(c.hosts, host) && !slices.Contains(c.hosts, rule) {
		return "host not granted", fmt.Sprintf("client %s may not reach %s (clients.%s.hosts)", c.Name, host, c.Name)
	}
	if method == http.MethodConnect || c.grants == nil {
		return "", ""
	}
	g := groups.Of(method, path)
	if c.grants[g] {
		return "", ""
	}
	what := fmt.Sprintf("%s %s is in the %q group", method, path, g)
	if g == "" {
		what = fmt.Sprintf("%s %s is in no endpoint group of %s's profile", method, path, host)
	}
	return "endpoint group not granted", fmt.Sprintf("%s, and client %s is granted %v (clients.%s.grants)", what, c.Name, slices.Sorted(maps.Keys(c.grants)), c.Name)
}

func refuseGrant(w http.ResponseWriter, r *http.Request, rec *decision.Record, reason, detail string) {
	rec.Refuse(decision.Grant, reason)
	obs.WriteError(w, r, &obs.Error{Status: http.StatusForbidden, Msg: reason, Host: rec.Target.String(), Detail: detail})
}

// maxSignedBody bounds the body read to sign a request (exchange API
// calls are small; the body stage has buffered one this size already).
const maxSignedBody = 1 << 20

// Sign is the signing stage, the last before the upstream: a request
// carrying the placeholder key of a key sluice holds for its client and
// host gets the real key and a signature made over it as forwarded, and
// one audit line (client, key, method, canonical path, status; never the
// secret, the key or the signature).
func Sign(log *slog.Logger, m *Metrics, of func(*http.Request) *Vault) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := decision.From(r.Context())
			c := of(r).Client(rec.Client)
			var k *Key
			if c != nil {
				k = c.keys[rec.Target.Host]
			}
			if k == nil || r.Header.Get(k.signer.keyHeader()) != k.Placeholder {
				next.ServeHTTP(w, r) // public endpoints go unsigned, as the bot sent them
				return
			}
			body, err := io.ReadAll(io.LimitReader(r.Body, maxSignedBody+1))
			if err == nil && len(body) > maxSignedBody {
				err = fmt.Errorf("body over %d bytes", maxSignedBody)
			}
			if err == nil {
				body, err = k.signer.sign(r, body, k)
			}
			if err != nil {
				m.signed.WithLabelValues(k.Name, "failed").Inc()
				rec.Refuse(decision.Vault, "not signable")
				log.Warn("audit: request not signed", "client", c.Name, "key", k.Name, "method", r.Method, "host", rec.Target.String(), "path", rec.Path, "error", err.Error())
				obs.WriteError(w, r, &obs.Error{Status: http.StatusBadRequest, Msg: "request not signable", Host: rec.Target.String(),
					Detail: fmt.Sprintf("sluice signs %s requests with key %s and could not sign this one: %v", k.Exchange, k.Name, err)})
				return
			}
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			if len(body) == 0 {
				r.Body = http.NoBody
			}
			m.signed.WithLabelValues(k.Name, "signed").Inc()
			next.ServeHTTP(w, r)
			log.Info("audit: signed request", "client", c.Name, "key", k.Name, "method", r.Method, "host", rec.Target.String(), "path", rec.Path, "status", rec.Status)
		})
	}
}
