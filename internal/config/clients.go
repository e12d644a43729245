package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Key is an exchange credential that sluice holds for its bots (the key
// vault): bots send Placeholder as their API key and sign with any secret;
// sluice puts the real key in and signs again. The key and secret come
// from files (mode 0600) or environment variables, never from this file.
type Key struct {
	// Exchange is how requests are signed: binance, bybit or kraken.
	Exchange   string `yaml:"exchange"`
	KeyFile    string `yaml:"key_file,omitempty"`
	SecretFile string `yaml:"secret_file,omitempty"`
	KeyEnv     string `yaml:"key_env,omitempty"`
	SecretEnv  string `yaml:"secret_env,omitempty"`
	// Placeholder is the API key bots send instead of the real one
	// (default "sluice"); any other key is refused.
	Placeholder string `yaml:"placeholder,omitempty"`
	// Limits bound what every client trading with this key may do together.
	Limits *TradeLimits `yaml:"limits,omitempty"`
}

// TradeLimits bound the orders of a client, a group of clients or a key
// (the trade guardrails): an order over one is refused by sluice with 403
// and never reaches the exchange. Zero: no such limit.
type TradeLimits struct {
	OrdersPerMinute int `yaml:"orders_per_minute,omitempty"`
	// OrdersPerDay counts the last 24 hours.
	OrdersPerDay int `yaml:"orders_per_day,omitempty"`
	// NotionalPerOrder and NotionalPerDay are in the symbol's quote
	// currency (USDT for BTCUSDT): price times quantity, or the quote
	// quantity of a market order that names one.
	NotionalPerOrder float64 `yaml:"notional_per_order,omitempty"`
	NotionalPerDay   float64 `yaml:"notional_per_day,omitempty"`
	// OpenOrders bounds the orders open at once: counted from the orders
	// placed and the cancels and fills sluice saw, corrected by the
	// exchange's open-orders answer whenever a bot asks for it.
	OpenOrders int `yaml:"open_orders,omitempty"`
	// Symbols, when given, are the only symbols it may order.
	Symbols []string `yaml:"symbols,omitempty,flow"`
	// Leverage allows leverage changes, which are refused otherwise.
	Leverage bool `yaml:"leverage,omitempty"`
	// Unpriced is what a notional limit does with an order sluice cannot
	// value (a market order by base quantity): refuse (default) or allow.
	Unpriced string `yaml:"unpriced,omitempty"`
	// WarnAt is the share of a limit at which sluice warns, once each time
	// the use crosses it (default 0.8).
	WarnAt *float64 `yaml:"warn_at,omitempty"`
}

// DefaultWarnAt is the share of a trade limit at which sluice warns.
const DefaultWarnAt = 0.8

// ClientGroup is a named set of clients whose orders count together.
type ClientGroup struct {
	Clients []string     `yaml:"clients,flow"`
	Limits  *TradeLimits `yaml:"limits,omitempty"`
}

// Exchanges sluice signs for.
var Exchanges = []string{"binance", "bybit", "kraken"}

// Client is one bot, or one group of bots that share a name, and what it
// may do.
type Client struct {
	// PasswordFile holds the client's password (or "sha256:" and its hex
	// digest), mode 0600: it sends Proxy-Authorization: Basic NAME:PASSWORD.
	PasswordFile string `yaml:"password_file,omitempty"`
	// Addresses identify the client by source address (IPs or CIDRs), a
	// weaker fallback for clients that cannot send proxy credentials.
	Addresses []string `yaml:"addresses,omitempty,flow"`
	// Certificate: the client may present a certificate from sluice's CA
	// whose common name is its name (sluice clients cert NAME), on the
	// HTTPS-proxy listener.
	Certificate bool `yaml:"certificate,omitempty"`
	// Hosts are the hosts (names, or keys of hosts:) it may reach.
	Hosts []string `yaml:"hosts,flow"`
	// Grants are the endpoint groups of the hosts' profiles it may call
	// (read, trade, withdraw); empty: every group.
	Grants []string `yaml:"grants,omitempty,flow"`
	// Keys name, by host, the vault key sluice signs its requests with.
	Keys map[string]string `yaml:"keys,omitempty"`
	// Limits bound its orders (the trade guardrails).
	Limits *TradeLimits `yaml:"limits,omitempty"`
}

// EndpointGroup is a named set of a profile's endpoints, which clients'
// grants name. A request is in the first group it matches.
type EndpointGroup struct {
	Name      string   `yaml:"name"`
	Methods   []string `yaml:"methods,omitempty,flow"`
	Path      string   `yaml:"path,omitempty"`
	PathRegex string   `yaml:"path_regex,omitempty"`
}

// DefaultPlaceholder is the API key bots send for a vault key that names none.
const DefaultPlaceholder = "sluice"

func (c *Config) validateClients() []error {
	var errs []error
	add := func(err error, keys ...string) { errs = append(errs, fieldErr(err, keys...)) }
	for _, name := range slices.Sorted(maps.Keys(c.Keys)) {
		k := c.Keys[name]
		if k == nil {
			add(errors.New("empty: give exchange and where its key and secret are"), "keys", name)
			continue
		}
		if !slices.Contains(Exchanges, k.Exchange) {
			add(fmt.Errorf("%q: sluice signs for %v", k.Exchange, Exchanges), "keys", name, "exchange")
		}
		if (k.KeyFile == "") == (k.KeyEnv == "") {
			add(errors.New("give exactly one of key_file and key_env"), "keys", name)
		}
		if (k.SecretFile == "") == (k.SecretEnv == "") {
			add(errors.New("give exactly one of secret_file and secret_env"), "keys", name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Clients)) {
		cl := c.Clients[name]
		if cl == nil {
			add(errors.New("empty: give how it proves who it is, and its hosts"), "clients", name)
			continue
		}
		if cl.PasswordFile == "" && len(cl.Addresses) == 0 && !cl.Certificate {
			add(errors.New("give password_file, addresses or certificate: true, or nobody can be this client"), "clients", name)
		}
		for i, a := range cl.Addresses {
			if _, err := ParsePrefix(a); err != nil {
				add(err, "clients", name, "addresses", fmt.Sprint(i))
			}
		}
		if len(cl.Hosts) == 0 {
			add(errors.New("list the hosts this client may reach"), "clients", name, "hosts")
		}
		for _, g := range cl.Grants {
			if !slices.Contains(knownGroups(), g) {
				add(fmt.Errorf("%q is no endpoint group of a profile (%v)", g, knownGroups()), "clients", name, "grants")
			}
		}
		errs = append(errs, cl.Limits.validate("clients", name, "limits")...)
		for _, host := range slices.Sorted(maps.Keys(cl.Keys)) {
			key := c.Keys[cl.Keys[host]]
			switch {
			case key == nil:
				add(fmt.Errorf("no key %q under keys", cl.Keys[host]), "clients", name, "keys", host)
			case !slices.Contains(cl.Hosts, host):
				add(fmt.Errorf("%s is not in this client's hosts", host), "clients", name, "keys", host)
			default:
				if h := c.Hosts[host]; h != nil && h.Profile != "" && h.Profile != key.Exchange {
					add(fmt.Errorf("key %q signs for %s, but %s has the %s profile", cl.Keys[host], key.Exchange, host, h.Profile), "clients", name, "keys", host)
				}
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Keys)) {
		if k := c.Keys[name]; k != nil {
			errs = append(errs, k.Limits.validate("keys", name, "limits")...)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Groups)) {
		g := c.Groups[name]
		if g == nil || len(g.Clients) == 0 {
			add(errors.New("list the clients of the group"), "groups", name, "clients")
			continue
		}
		for i, cl := range g.Clients {
			if c.Clients[cl] == nil {
				add(fmt.Errorf("no client %q under clients", cl), "groups", name, "clients", fmt.Sprint(i))
			}
		}
		errs = append(errs, g.Limits.validate("groups", name, "limits")...)
	}
	return errs
}

func (l *TradeLimits) validate(keys ...string) []error {
	if l == nil {
		return nil
	}
	var errs []error
	add := func(err error, key string) { errs = append(errs, fieldErr(err, append(slices.Clone(keys), key)...)) }
	if l.OrdersPerMinute < 0 {
		add(errors.New("must not be negative"), "orders_per_minute")
	}
	if l.OrdersPerDay < 0 {
		add(errors.New("must not be negative"), "orders_per_day")
	}
	if l.OpenOrders < 0 {
		add(errors.New("must not be negative"), "open_orders")
	}
	if l.NotionalPerOrder < 0 {
		add(errors.New("must not be negative"), "notional_per_order")
	}
	if l.NotionalPerDay < 0 {
		add(errors.New("must not be negative"), "notional_per_day")
	}
	if l.WarnAt != nil && (*l.WarnAt <= 0 || *l.WarnAt > 1) {
		add(fmt.Errorf("%v: want a share above 0 and at most 1 (0.8: at 80%%)", *l.WarnAt), "warn_at")
	}
	if l.Unpriced != "" && l.Unpriced != "refuse" && l.Unpriced != "allow" {
		add(fmt.Errorf("%q: want refuse or allow", l.Unpriced), "unpriced")
	}
	return errs
}

// knownGroups are the endpoint group names the profiles define, and the
// default groups of a profile without any.
func knownGroups() []string {
	names := []string{"read", "trade"}
	if ps, err := Profiles(); err == nil {
		for _, p := range ps {
			for _, g := range p.Groups {
				if !slices.Contains(names, g.Name) {
					names = append(names, g.Name)
				}
			}
		}
	}
	slices.Sort(names)
	return names
}
