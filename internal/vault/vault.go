// Package vault is who each client is and what it may do (clients:), and
// the exchange keys that only sluice holds (keys:): a bot sends a
// placeholder API key and a signature made with any secret; sluice puts
// the real key in and signs the request again, exactly as it forwards it.
// A compromised bot has nothing to steal, and can call only the endpoint
// groups (read, trade, never withdraw) it was granted.
//
// Its stages: Identify (after the canonical request: Proxy-Authorization
// Basic, a client certificate from sluice's CA on the HTTPS-proxy
// listener, or the source address; 407 when nothing names a client),
// Grants (after the policy: the client's hosts, its endpoint groups, and no
// real key where sluice holds one) and Sign (the last before the
// upstream, with one audit line per signed request).
//
// Config keys: keys.NAME (exchange, key_file | key_env, secret_file |
// secret_env, placeholder), clients.NAME (password_file, addresses,
// certificate, hosts, grants, keys); a profile's groups.
//
// Metrics: sluice_client_requests_total{client}, sluice_vault_signed_total{key,outcome}.
package vault

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sluice/internal/config"
)

// Vault is the compiled clients and keys of one config. It is immutable.
type Vault struct {
	clients map[string]*Client
	byAddr  []addrClient // longest prefix first
	certs   bool         // some client may present a certificate
}

// Certificates reports whether some client may prove who it is with a
// certificate from sluice's CA (clients.NAME.certificate); nil has none.
func (v *Vault) Certificates() bool { return v != nil && v.certs }

type addrClient struct {
	prefix netip.Prefix
	client *Client
}

// Client is one named client.
type Client struct {
	Name     string
	password [32]byte // SHA-256 of the password
	hasPass  bool
	cert     bool
	hosts    []string
	grants   map[string]bool // nil: every group
	keys     map[string]*Key // by host
}

// Key is one exchange credential.
type Key struct {
	Name        string
	Exchange    string
	Placeholder string
	key, secret []byte
	signer      signer
}

// Compile reads the clients' passwords and the keys (files must be mode
// 0600 or stricter; environment variables must be set). nil: the config
// names no clients, and every client may do what the hosts allow.
func Compile(cfg *config.Config) (*Vault, error) {
	if len(cfg.Clients) == 0 {
		if len(cfg.Keys) > 0 {
			return nil, errors.New("keys: the vault signs only for named clients; add clients: with their keys")
		}
		return nil, nil
	}
	keys := map[string]*Key{}
	for _, name := range slices.Sorted(maps.Keys(cfg.Keys)) {
		k := cfg.Keys[name]
		key, err := secretOf(cfg, k.KeyFile, k.KeyEnv)
		if err != nil {
			return nil, config.Under(err, "keys", name, "key")
		}
		secret, err := secretOf(cfg, k.SecretFile, k.SecretEnv)
		if err != nil {
			return nil, config.Under(err, "keys", name, "secret")
		}
		if string(key) == k.Placeholder {
			return nil, config.Under(errors.New("the key is its own placeholder: set placeholder to what bots send"), "keys", name)
		}
		s, err := newSigner(k.Exchange, secret)
		if err != nil {
			return nil, config.Under(err, "keys", name, "secret")
		}
		keys[name] = &Key{Name: name, Exchange: k.Exchange, Placeholder: k.Placeholder, key: key, secret: secret, signer: s}
	}
	v := &Vault{clients: map[string]*Client{}}
	for _, name := range slices.Sorted(maps.Keys(cfg.Clients)) {
		c := cfg.Clients[name]
		cl := &Client{Name: name, cert: c.Certificate, hosts: c.Hosts, keys: map[string]*Key{}}
		v.certs = v.certs || c.Certificate
		if c.PasswordFile != "" {
			pw, err := secretOf(cfg, c.PasswordFile, "")
			if err != nil {
				return nil, config.Under(err, "clients", name, "password_file")
			}
			if digest, ok := strings.CutPrefix(string(pw), "sha256:"); ok {
				b, err := hex.DecodeString(digest)
				if err != nil || len(b) != sha256.Size {
					return nil, config.Under(errors.New(`"sha256:" must be followed by 64 hex digits`), "clients", name, "password_file")
				}
				copy(cl.password[:], b)
			} else {
				cl.password = sha256.Sum256(pw)
			}
			cl.hasPass = true
		}
		prefixes, err := config.ParsePrefixes(c.Addresses)
		if err != nil {
			return nil, config.Under(err, "clients", name, "addresses")
		}
		for _, p := range prefixes {
			v.byAddr = append(v.byAddr, addrClient{p, cl})
		}
		if len(c.Grants) > 0 {
			cl.grants = map[string]bool{}
			for _, g := range c.Grants {
				cl.grants[g] = true
			}
		}
		for host, keyName := range c.Keys {
			cl.keys[host] = keys[keyName]
		}
		v.clients[name] = cl
	}
	slices.SortStableFunc(v.byAddr, func(a, b addrClient) int { return b.prefix.Bits() - a.prefix.Bits() })
	return v, nil
}

// secretOf reads a secret from file (resolved against the config's
// directory; group or others may not read it) or from the environment.
func secretOf(cfg *config.Config, file, env string) ([]byte, error) {
	if env != "" {
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return nil, fmt.Errorf("environment variable %s is not set", env)
		}
		return []byte(v), nil
	}
	path := cfg.Path(file)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o): chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	data = []byte(strings.TrimSpace(string(data)))
	if len(data) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return data, nil
}

// Client returns the client of that name.
func (v *Vault) Client(name string) *Client {
	if v == nil {
		return nil
	}
	return v.clients[name]
}

// Names are the clients' names, sorted.
func (v *Vault) Names() []string {
	if v == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(v.clients))
}

// Groups are a profile's endpoint groups, compiled.
type Groups []group

type group struct {
	name    string
	methods []string
	prefix  string
	re      *regexp.Regexp
}

// DefaultGroups are the groups of a host whose profile defines none: read
// is GET and HEAD, trade the rest.
var DefaultGroups = Groups{{name: "read", methods: []string{"GET", "HEAD"}}, {name: "trade"}}

// CompileGroups compiles a profile's groups (none: DefaultGroups).
func CompileGroups(gs []config.EndpointGroup) (Groups, error) {
	if len(gs) == 0 {
		return DefaultGroups, nil
	}
	out := make(Groups, 0, len(gs))
	for i, g := range gs {
		cg := group{name: g.Name, methods: g.Methods, prefix: g.Path}
		if g.PathRegex != "" {
			re, err := regexp.Compile(g.PathRegex)
			if err != nil {
				return nil, config.Under(err, "groups", strconv.Itoa(i), "path_regex")
			}
			cg.re = re
		}
		out = append(out, cg)
	}
	return out, nil
}

// Of returns the group of a request, "" when it is in none.
func (gs Groups) Of(method, path string) string {
	for _, g := range gs {
		if len(g.methods) > 0 && !slices.Contains(g.methods, method) {
			continue
		}
		if g.re != nil && !g.re.MatchString(path) || g.re == nil && !strings.HasPrefix(path, g.prefix) {
			continue
		}
		return g.name
	}
	return ""
}
