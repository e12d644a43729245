package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"sluice/internal/hostport"
)

// Config is the whole gateway configuration. It is plain data: Load fills it
// from YAML, Validate checks it, and the components parse what they need.
type Config struct {
	Listen Listen `yaml:"listen"`
	// DataDir holds the CA, the client CA bundle and later the blob store.
	// A leading "~/" is the user's home. Default: DefaultDataDir.
	DataDir string `yaml:"data_dir" reload:"restart"`
	// HostsFile is a plain list of host patterns, one per line, "#" starts a
	// comment; each becomes an intercepted host entry unless Hosts lists it too.
	HostsFile string `yaml:"hosts_file,omitempty" reload:"live"`
	// Hosts maps a host pattern (exact name, or "*.suffix" for every name
	// under suffix) to what sluice does with it. A host not listed is denied.
	Hosts map[string]*Host `yaml:"hosts" reload:"live"`
	// Policy is enforce (default) or report: see PolicyReport.
	Policy   PolicyMode     `yaml:"policy,omitempty" reload:"live"`
	Cache    CacheConfig    `yaml:"cache"`
	Throttle ThrottleConfig `yaml:"throttle" reload:"live"`
	Blobs    BlobsConfig    `yaml:"blobs"`
	Bans     BansConfig     `yaml:"bans"`
	// RuleSets are named request rule sets that host entries name.
	RuleSets map[string]*RuleSet `yaml:"rule_sets,omitempty" reload:"live"`
	Timeouts Timeouts            `yaml:"timeouts"`
	Limits   Limits              `yaml:"limits" reload:"live"`
	CA       CA                  `yaml:"ca" reload:"restart"`
	Log      Log                 `yaml:"log"`
	DNS      DNS                 `yaml:"dns"`
	Fleet    Fleet               `yaml:"fleet" reload:"restart"`
	// Keys are the exchange credentials sluice signs with (the key vault).
	Keys map[string]*Key `yaml:"keys,omitempty" reload:"live"`
	// Clients name the bots: how each proves who it is, and what it may
	// do. With none, every client may do what the hosts allow.
	Clients map[string]*Client `yaml:"clients,omitempty" reload:"live"`
	// Groups are named sets of clients whose orders count together
	// against the group's trade limits.
	Groups map[string]*ClientGroup `yaml:"groups,omitempty" reload:"live"`

	// Dir is the directory that relative paths in the file are resolved
	// against: the config file's own directory, or the working directory
	// for the embedded default.
	Dir string `yaml:"-"`

	// name and root are the file's name and YAML tree, for Locate.
	name string
	root *yaml.Node
}

// Listen holds the listener addresses (IP:port). "off" disables a listener.
type Listen struct {
	// Proxy is the forward proxy (CONNECT and absolute-URI HTTP). Default "127.0.0.1:3128".
	Proxy string `yaml:"proxy" reload:"restart"`
	// ProxyTLS is an optional forward proxy whose client hop is TLS (an
	// "https://" proxy URL), with a certificate from sluice's CA. Default off.
	ProxyTLS string `yaml:"proxy_tls,omitempty" reload:"restart"`
	// Admin serves /healthz, /metrics and /ca.pem. Default "127.0.0.1:9090".
	Admin string `yaml:"admin" reload:"restart"`
	// Reverse is an optional reverse-proxy listener in front of one backend.
	Reverse *Reverse `yaml:"reverse,omitempty"`
	// TransparentTLS takes TLS connections from clients that DNS sent to
	// sluice (they believe they talk to the host on 443, or 9443 for
	// Binance's streams) and routes each by its SNI: an address or a list
	// (`[":443", ":9443"]`). Default off.
	TransparentTLS Addrs `yaml:"transparent_tls,omitempty,flow" reload:"restart"`
	// TransparentHTTP takes plain requests from such clients (port 80) and
	// routes each by its Host. Default off.
	TransparentHTTP string `yaml:"transparent_http,omitempty" reload:"restart"`
	// DNS is the DNS server (UDP and TCP) that answers allowed names with
	// dns.answer and refuses every other. Default off.
	DNS string `yaml:"dns,omitempty" reload:"restart"`
}

// Fleet makes several instances one gateway: budgets and bans shared in
// Redis. Without Redis everything stays in this instance's memory.
type Fleet struct {
	// Redis is a redis:// or rediss:// URL.
	Redis string `yaml:"redis,omitempty"`
	// Instance names this instance in the fleet. Default: the host name.
	Instance string `yaml:"instance,omitempty"`
	// Timeout bounds every call to Redis; past it the instance falls back
	// to its own share. Default 100ms.
	Timeout Duration `yaml:"timeout,omitempty"`
	// Cache shares rules-mode responses (to requests without credentials)
	// in Redis behind each instance's memory cache: one upstream call per
	// key per TTL for the whole fleet.
	Cache bool `yaml:"cache,omitempty"`
	// CacheMaxBytes bounds the fleet cache in Redis; past it the entries
	// nearest their expiry go first. Default 64MiB.
	CacheMaxBytes ByteSize `yaml:"cache_max_bytes,omitempty"`
}

// DNS configures sluice's DNS server and how sluice itself resolves.
type DNS struct {
	// Answer are the addresses at which clients reach sluice: the A and
	// AAAA answers for every allowed name.
	Answer []string `yaml:"answer,omitempty,flow" reload:"live"`
	// Refuse is the answer for every other name: refused (default) or nxdomain.
	Refuse string `yaml:"refuse,omitempty" reload:"live"`
	// RateLimit is the responses per second one client gets (default 1000;
	// off for none); past it, UDP queries are dropped and TCP ones refused.
	RateLimit *RateLimit `yaml:"rate_limit,omitempty" reload:"restart"`
	// Resolvers are the resolvers sluice itself uses for upstream names:
	// "IP:port" (UDP, then TCP when truncated) or "tls://HOST:853" (DNS
	// over TLS, verified against the system roots). Empty: the system's.
	Resolvers []string `yaml:"resolvers,omitempty,flow" reload:"restart"`
	// Pin is first (the first good answer for each host is kept in the
	// data dir and used for every later connection) or off. Default first
	// when listen.dns or a transparent listener is set, else off.
	Pin string `yaml:"pin,omitempty" reload:"restart"`
	// Recheck is how often pinned hosts are resolved again to find answers
	// that disagree with the pin (warned, never followed). Default 10m.
	Recheck Duration `yaml:"recheck,omitempty" reload:"restart"`
}

// RateLimit is a per-client rate: a number per second, or "off".
type RateLimit struct {
	PerSecond int
	Off       bool
}

// UnmarshalYAML reads a positive number or "off".
func (r *RateLimit) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Value == Off {
		r.Off = true
		return nil
	}
	if err := n.Decode(&r.PerSecond); err != nil || r.PerSecond <= 0 {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: rate_limit %q: want a positive number of responses per second, or off", n.Line, n.Value)}}
	}
	return nil
}

// MarshalYAML writes the number or "off".
func (r RateLimit) MarshalYAML() (any, error) {
	if r.Off {
		return Off, nil
	}
	return r.PerSecond, nil
}

// Reverse is a reverse-proxy listener: every request to Addr goes to Backend.
type Reverse struct {
	// Addr is the listener's IP:port.
	Addr string `yaml:"addr" reload:"restart"`
	// Backend is the origin, "http://host:port" or "https://host:port"
	// (verified against the system roots plus BackendCA).
	Backend string `yaml:"backend" reload:"live"`
	// BackendCA is a PEM file of extra roots for an https backend.
	BackendCA string `yaml:"backend_ca,omitempty" reload:"live"`
	// Cache is how responses are cached; default standard (RFC 9111).
	Cache *HostCache `yaml:"cache,omitempty" reload:"live"`
	// Rules names the rule set checked before a request reaches the backend.
	Rules *HostRules `yaml:"rules,omitempty" reload:"live"`
	// TLSCert and TLSKey, both PEM files, make the listener HTTPS.
	TLSCert string `yaml:"tls_cert,omitempty" reload:"restart"`
	TLSKey  string `yaml:"tls_key,omitempty" reload:"restart"`
	// TrustedProxies (IPs or CIDRs) are the peers whose X-Forwarded-For,
	// or PROXY protocol header, names the real client. From any other peer
	// the client is the socket's address.
	TrustedProxies []string `yaml:"trusted_proxies,omitempty,flow" reload:"live"`
	// ProxyProtocol reads a PROXY protocol (v1 or v2) header from trusted
	// peers, as HAProxy and cloud load balancers send it.
	ProxyProtocol bool `yaml:"proxy_protocol,omitempty" reload:"restart"`
}

// ListenAddr is one listener address and where the config sets it.
type ListenAddr struct {
	// Key names the listener: "proxy", "transparent_tls", and from the
	// second address of a list on, "transparent_tls[1]".
	Key string
	// Path is its place under listen, for errors.
	Path []string
	Addr string
}

// Named lists the addresses of the listeners (off ones too) but the
// reverse one, with their keys.
func (l Listen) Named() []ListenAddr {
	out := []ListenAddr{{"proxy", []string{"proxy"}, l.Proxy}, {"proxy_tls", []string{"proxy_tls"}, l.ProxyTLS}, {"admin", []string{"admin"}, l.Admin}}
	for i, a := range l.TransparentTLS {
		key, path := "transparent_tls", []string{"transparent_tls"}
		if len(l.TransparentTLS) > 1 {
			path = append(path, strconv.Itoa(i))
		}
		if i > 0 {
			key = fmt.Sprintf("transparent_tls[%d]", i)
		}
		out = append(out, ListenAddr{key, path, a})
	}
	return append(out, ListenAddr{"transparent_http", []string{"transparent_http"}, l.TransparentHTTP}, ListenAddr{"dns", []string{"dns"}, l.DNS})
}

// Off is the listener address that disables a listener.
const Off = "off"

// Host is one entry of Config.Hosts. A nil *Host (a key with no value) takes
// every default.
type Host struct {
	// Mode is intercept (default), tunnel, deny or report.
	Mode Mode `yaml:"mode,omitempty"`
	// Profile names an embedded API profile (see Profiles), or "none". A
	// host the embedded default knows (api.binance.com: binance) keeps its
	// profile unless the entry names another or none, so that an entry
	// written to change one setting never drops its cache rules, budget
	// and withdrawal guard.
	Profile string `yaml:"profile,omitempty"`
	// ProfileFrom says where Profile came from (sluice check shows it).
	ProfileFrom ProfileSource `yaml:"-"`
	// Ports the client may reach on this host. Default [443], plus 80 when PlainHTTP.
	Ports []uint16 `yaml:"ports,omitempty,flow"`
	// PlainHTTP allows unencrypted absolute-URI requests ("GET http://...").
	PlainHTTP bool `yaml:"plain_http,omitempty"`
	// UpstreamCA is a PEM file of extra roots trusted for this host's
	// upstream certificate, on top of the system roots.
	UpstreamCA string `yaml:"upstream_ca,omitempty"`
	// AllowPrivate lets the upstream resolve to loopback, private,
	// link-local or metadata addresses, which are refused otherwise.
	AllowPrivate bool `yaml:"allow_private,omitempty"`
	// ConnectTo dials this host:port instead of the host's own address; the
	// upstream certificate is still verified against the requested name.
	ConnectTo string `yaml:"connect_to,omitempty"`
	// Cache is "rules", "standard" or "off", or a mapping with rules; see HostCache.
	Cache *HostCache `yaml:"cache,omitempty"`
	// Throttle is "off" or the host's upstream budget; default: its profile's.
	Throttle *HostThrottle `yaml:"throttle,omitempty"`
	// Blobs is "off" or extra immutable-file patterns for this host.
	Blobs *HostBlobs `yaml:"blobs,omitempty"`
	// Rules names the request rule set checked before anything is
	// forwarded (default: the profile's, which for exchanges refuses the
	// endpoints that move funds out), or "off".
	Rules *HostRules `yaml:"rules,omitempty"`
	// Streams is "off" (WebSockets spliced per client) or settings over
	// the profile's shared market streams.
	Streams *HostStreams `yaml:"streams,omitempty"`
}

// BansConfig is the top-level `bans` section.
type BansConfig struct {
	// IPv6Prefix is the prefix length by which IPv6 clients are counted and
	// banned: one host usually holds a whole /64, so banning its addresses
	// one by one bans nothing. Default 64; 128 is per address.
	IPv6Prefix int `yaml:"ipv6_prefix" reload:"restart"`
	// AuthFailures bans an address whose proxy credentials fail this often
	// (with clients:). Default 10 within 1m ban for 15m.
	AuthFailures *BanPolicy `yaml:"auth_failures,omitempty" reload:"live"`
}

// Timeouts bounds each phase of a connection.
type Timeouts struct {
	// Dial bounds resolving and connecting to an upstream. Default 10s.
	Dial Duration `yaml:"dial" reload:"live"`
	// TLSHandshake bounds each TLS handshake, client side and upstream side. Default 10s.
	TLSHandshake Duration `yaml:"tls_handshake" reload:"live"`
	// ResponseHeader bounds the wait for an upstream's response headers. Default 60s.
	ResponseHeader Duration `yaml:"response_header" reload:"live"`
	// RequestHeader bounds the wait for a client's request headers, on
	// every listener. Default 10s.
	RequestHeader Duration `yaml:"request_header" reload:"restart"`
	// ClientIdle closes a client keep-alive connection idle this long. Default 120s.
	ClientIdle Duration `yaml:"client_idle" reload:"restart"`
	// TunnelIdle closes a tunnel with no traffic either way for this long. Default 10m.
	TunnelIdle Duration `yaml:"tunnel_idle" reload:"live"`
	// BodyIdle cuts off a request body that sends nothing for this long
	// (answered 408 where an answer is still possible). Default 30s.
	BodyIdle Duration `yaml:"body_idle" reload:"live"`
	// Body bounds the whole request body, from its headers to its last
	// byte, plus a second for every 64 KiB it sent, so that a large upload
	// at a good rate is not cut off (answered 408 where an answer is still
	// possible). Default 2m.
	Body Duration `yaml:"body" reload:"live"`
	// Shutdown is how long in-flight requests may run after SIGTERM. Default 15s.
	Shutdown Duration `yaml:"shutdown" reload:"restart"`
}

// Limits bounds what clients may hold of sluice: connections, and the
// memory and time their request bodies take.
type Limits struct {
	// ConnectionsPerClient caps the connections one client address (an
	// IPv6 client by its bans.ipv6_prefix) holds open at once; past it a
	// new connection is closed at once (the plain proxy listener answers
	// 429 first). 0 is no cap. Default 4096: bots on one host share its
	// address, and ccxt.pro opens dozens of connections per bot.
	ConnectionsPerClient *int `yaml:"connections_per_client"`
	// BodyMinRate is the least a request body must send per second, on
	// average over each BodyRateWindow that sluice spends waiting for it
	// (the first window is the grace). Slower: 408. Default 1KiB; 0 is no minimum.
	BodyMinRate *ByteSize `yaml:"body_min_rate"`
	// BodyRateWindow is the time over which BodyMinRate is averaged. Default 10s.
	BodyRateWindow Duration `yaml:"body_rate_window"`
	// BufferedBodies caps the memory that all request bodies read whole
	// before forwarding (up to 1MiB each) hold together. Past it a body
	// streams instead, or, where a rule must read it whole, is refused
	// with 503. At least 2MiB; default 32MiB.
	BufferedBodies ByteSize `yaml:"buffered_bodies"`
}

// CA configures the certificate authority that signs intercepted hosts.
type CA struct {
	// LeafValidity is the lifetime of a minted leaf; leaves are re-minted
	// when a quarter of it remains. Default 168h (7 days).
	LeafValidity Duration `yaml:"leaf_validity"`
	// LeafCacheSize caps the cached leaf certificates (LRU). Default 1024.
	LeafCacheSize int `yaml:"leaf_cache_size"`
}

// Log configures the log output (stderr).
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level" reload:"live"`
	// Format is json (default) or text.
	Format string `yaml:"format" reload:"restart"`
	// Queries logs the query strings of requests. They often carry API keys
	// and signatures, so they are left out unless this is true.
	Queries bool `yaml:"queries,omitempty" reload:"live"`
	// File, when set, is where the log goes instead of standard error,
	// rotated at MaxSize with MaxFiles old files kept (a relative path is
	// relative to the config file). Under systemd, standard error is the
	// journal already.
	File     string   `yaml:"file,omitempty" reload:"restart"`
	MaxSize  ByteSize `yaml:"max_size,omitempty" reload:"restart"`
	MaxFiles int      `yaml:"max_files,omitempty" reload:"restart"`
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the embedded default configuration file.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Parse decodes and validates a config file's structure (internal/route
// compiles the rest: route.Load is what the commands use). name labels the
// errors; dir is where relative paths in it resolve.
func Parse(data []byte, name, dir string) (*Config, error) {
	c, errs := Decode(data, name, dir)
	if len(errs) > 0 {
		if c == nil {
			return nil, errors.Join(errs...)
		}
		return nil, c.Locate(errs)
	}
	return c, nil
}

// Decode decodes a config file's contents over the defaults and checks its
// structure. It returns the config, nil only when the file cannot be read
// as YAML at all, and every problem found: decoding errors with their
// lines, and [FieldError]s that [Config.Locate] places. A config with
// problems may be compiled all the same, so that every error of a file is
// reported at once.
func Decode(data []byte, name, dir string) (*Config, []error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, []error{fileError(name, tabHint(data, err), nil)}
	}
	if len(root.Content) == 0 {
		// An empty file is more likely a truncated or wrong one than a wish
		// to deny every host; the embedded default is what runs without -c.
		return nil, []error{fmt.Errorf("%s: the config is empty (no YAML document); write at least one key, e.g. hosts: {}", name)}
	}
	if dups := duplicateKeys(name, &root); len(dups) > 0 {
		return nil, dups // the decoder would stop at the first
	}
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a typo is an error, not a silent default
	var errs []error
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		// A TypeError leaves the rest of the document decoded: go on, so
		// that every problem is reported at once. Anything else is fatal.
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, []error{fileError(name, err, &root)}
		}
		errs = append(errs, fileError(name, err, &root))
	}
	c.Dir, c.name, c.root = dir, name, &root
	c.applyDefaults()
	if c.HostsFile != "" {
		if err := c.loadHostsFile(); err != nil {
			errs = append(errs, err)
		}
	}
	return c, append(errs, c.validate()...)
}

// fileError prefixes each line of a YAML decoding error with the file name,
// so that "line 3: ..." reads "sluice.yaml:3: ...".
// tabHint names the tab in a line that YAML refused for one: YAML
// indents with spaces only, and its own message does not say so.
func tabHint(data []byte, err error) error {
	var line int
	if _, serr := fmt.Sscanf(strings.TrimPrefix(err.Error(), "yaml: "), "line %d:", &line); serr != nil || line < 1 {
		return err
	}
	lines := strings.Split(string(data), "\n")
	if line > len(lines) {
		return err
	}
	indent := lines[line-1][:len(lines[line-1])-len(strings.TrimLeft(lines[line-1], " \t"))]
	if !strings.Contains(indent, "\t") {
		return err
	}
	return fmt.Errorf("%w (a tab indents this line: YAML indents with spaces only)", err)
}

func fileError(name string, err error, root *yaml.Node) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		type lineErr struct {
			line int
			msg  string
		}
		les := make([]lineErr, 0, len(te.Errors))
		for _, e := range te.Errors {
			line, msg := explain(root, e)
			les = append(les, lineErr{line, msg})
		}
		slices.SortStableFunc(les, func(a, b lineErr) int { return a.line - b.line })
		errs := make([]error, 0, len(les))
		for _, le := range les {
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, le.line, le.msg))
		}
		return errors.Join(errs...)
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		return errors.New(name + ":" + rest)
	}
	return fmt.Errorf("%s: %s", name, msg)
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type (\S+)`)

// applyDefaults fills every unset field that has a default.
func (c *Config) applyDefaults() {
	setString(&c.Listen.Proxy, "127.0.0.1:3128")
	setString(&c.Listen.Admin, "127.0.0.1:9090")
	setString(&c.Listen.ProxyTLS, Off)
	if len(c.Listen.TransparentTLS) == 0 {
		c.Listen.TransparentTLS = Addrs{Off}
	}
	setString(&c.Listen.TransparentHTTP, Off)
	setString(&c.Listen.DNS, Off)
	setString(&c.DNS.Refuse, "refused")
	if c.DNS.RateLimit == nil {
		c.DNS.RateLimit = &RateLimit{PerSecond: 1000}
	}
	if c.Listen.DNS != Off || c.Listen.TransparentTLS.On() || c.Listen.TransparentHTTP != Off {
		setString(&c.DNS.Pin, "first")
	}
	setString(&c.DNS.Pin, Off)
	setDuration(&c.DNS.Recheck, 10*time.Minute)
	for _, k := range c.Keys {
		if k != nil {
			setString(&k.Placeholder, DefaultPlaceholder)
		}
	}
	if c.Fleet.Redis != "" {
		if h, err := os.Hostname(); err == nil {
			setString(&c.Fleet.Instance, h)
		}
		setDuration(&c.Fleet.Timeout, 100*time.Millisecond)
		if c.Fleet.Cache && c.Fleet.CacheMaxBytes == 0 {
			c.Fleet.CacheMaxBytes = 64 << 20
		}
	}
	setString(&c.DataDir, DefaultDataDir())
	if c.Policy == "" {
		c.Policy = PolicyEnforce
	}
	setDuration(&c.Timeouts.Dial, 10*time.Second)
	setDuration(&c.Timeouts.TLSHandshake, 10*time.Second)
	setDuration(&c.Timeouts.ResponseHeader, 60*time.Second)
	setDuration(&c.Timeouts.RequestHeader, 10*time.Second)
	setDuration(&c.Timeouts.ClientIdle, 120*time.Second)
	setDuration(&c.Timeouts.TunnelIdle, 10*time.Minute)
	setDuration(&c.Timeouts.BodyIdle, 30*time.Second)
	setDuration(&c.Timeouts.Body, 2*time.Minute)
	setDuration(&c.Limits.BodyRateWindow, 10*time.Second)
	if c.Limits.ConnectionsPerClient == nil {
		c.Limits.ConnectionsPerClient = new(4096)
	}
	if c.Limits.BodyMinRate == nil {
		c.Limits.BodyMinRate = new(ByteSize(1 << 10))
	}
	if c.Limits.BufferedBodies == 0 {
		c.Limits.BufferedBodies = 32 << 20
	}
	setDuration(&c.Timeouts.Shutdown, 15*time.Second)
	setDuration(&c.CA.LeafValidity, 7*24*time.Hour)
	if c.CA.LeafCacheSize == 0 {
		c.CA.LeafCacheSize = 1024
	}
	if r := c.Listen.Reverse; r != nil {
		if r.Cache == nil {
			r.Cache = &HostCache{Mode: CacheStandard}
		}
		for i := range r.Cache.Rules {
			r.Cache.Rules[i].applyDefaults()
		}
	}
	if c.Cache.MaxBytes == 0 {
		c.Cache.MaxBytes = 256 << 20
	}
	if c.Cache.MaxObjectBytes == 0 {
		c.Cache.MaxObjectBytes = 8 << 20
	}
	if c.Cache.StaleIfError == nil {
		d := Duration(60 * time.Second)
		c.Cache.StaleIfError = &d
	}
	setDuration(&c.Cache.FetchTimeout, 60*time.Second)
	setDuration(&c.Throttle.MaxWait, 10*time.Second)
	if c.Blobs.MaxBytes == 0 {
		c.Blobs.MaxBytes = 10 << 30
	}
	if c.Blobs.Patterns == nil {
		c.Blobs.Patterns = DefaultBlobPatterns
	}
	setString(&c.Blobs.WhenClientsLeave, "finish")
	if c.Bans.AuthFailures == nil {
		c.Bans.AuthFailures = &BanPolicy{Violations: 10, Window: Duration(time.Minute), Duration: Duration(15 * time.Minute)}
	}
	if c.Bans.IPv6Prefix == 0 {
		c.Bans.IPv6Prefix = 64
	}
	setString(&c.Log.Level, "info")
	setString(&c.Log.Format, "json")
	if c.Log.File != "" {
		if c.Log.MaxSize == 0 {
			c.Log.MaxSize = 100 << 20
		}
		if c.Log.MaxFiles == 0 {
			c.Log.MaxFiles = 5
		}
	}
	if c.Hosts == nil {
		c.Hosts = map[string]*Host{}
	}
	for k, h := range c.Hosts {
		if h == nil {
			h = &Host{}
			c.Hosts[k] = h
		}
		if h.Mode == "" {
			h.Mode = ModeIntercept
		}
		h.applyProfileDefault(k)
		if h.Cache != nil {
			for i := range h.Cache.Rules {
				h.Cache.Rules[i].applyDefaults()
			}
		}
		if len(h.Ports) == 0 {
			h.Ports = []uint16{443}
			if h.PlainHTTP {
				h.Ports = append(h.Ports, 80)
			}
		}
	}
}

// ProfileSource is where a host entry's profile came from.
type ProfileSource uint8

const (
	// ProfileUnknown: the entry names none, and the embedded default knows no profile for the host.
	ProfileUnknown ProfileSource = iota
	// ProfileFromEntry: the entry names it.
	ProfileFromEntry
	// ProfileFromDefault: the embedded default's host-to-profile table.
	ProfileFromDefault
	// ProfileDropped: the entry says profile: none.
	ProfileDropped
)

var profileSourceNames = [...]string{ProfileUnknown: "sluice knows no profile for this host", ProfileFromEntry: "set in its entry",
	ProfileFromDefault: "the embedded default's for this host; profile: none drops it", ProfileDropped: "profile: none in its entry"}

func (p ProfileSource) String() string { return profileSourceNames[p] }

// ProfileNone is the profile value that drops a host's default profile.
const ProfileNone = "none"

// applyProfileDefault gives an intercepted entry of pattern without a
// profile the one the embedded default gives its host.
func (h *Host) applyProfileDefault(pattern string) {
	switch {
	case h.Profile == ProfileNone:
		h.ProfileFrom = ProfileDropped
	case h.Profile != "":
		h.ProfileFrom = ProfileFromEntry
	case h.Mode == ModeIntercept || h.Mode == ModeReport:
		if n, err := hostport.ParsePattern(pattern); err == nil {
			if p := DefaultProfile(n); p != "" {
				h.Profile, h.ProfileFrom = p, ProfileFromDefault
			}
		}
	}
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setDuration(p *Duration, v time.Duration) {
	if *p == 0 {
		*p = Duration(v)
	}
}

// DefaultDataDir is where sluice keeps its state when data_dir is not set:
// $XDG_DATA_HOME/sluice, else $HOME/.local/share/sluice, else the first of
// $STATE_DIRECTORY (set by systemd for StateDirectory=); "" when none of
// them is set, which validation refuses.
func DefaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "sluice")
	}
	if h := os.Getenv("HOME"); filepath.IsAbs(h) {
		return filepath.Join(h, ".local", "share", "sluice")
	}
	if d, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); filepath.IsAbs(d) {
		return d
	}
	return ""
}

// Path resolves a path from the config file: "~/" is the home directory and
// a relative path is relative to c.Dir.
func (c *Config) Path(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if filepath.IsAbs(p) || c.Dir == "" {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// MarshalRedacted renders c as YAML with the values of secret-bearing keys
// (password, secret, token, credentials) replaced, for the admin API.
func (c *Config) MarshalRedacted() ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(c); err != nil {
		return nil, err
	}
	redact(&n)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

func redact(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := strings.ToLower(n.Content[i].Value), n.Content[i+1]
			if v.Kind == yaml.ScalarNode && (strings.Contains(k, "password") || strings.Contains(k, "secret") ||
				strings.Contains(k, "token") || strings.Contains(k, "credential")) {
				v.Value, v.Tag, v.Style = "REDACTED", "!!str", 0
			}
			if v.Kind == yaml.ScalarNode && strings.Contains(v.Value, "://") {
				// A URL's password (fleet.redis: redis://:PASSWORD@host)
				if u, err := url.Parse(v.Value); err == nil && u.User != nil {
					if _, has := u.User.Password(); has {
						u.User = url.UserPassword(u.User.Username(), "REDACTED")
						v.Value = u.String()
					}
				}
			}
		}
	}
	for _, c := range n.Content {
		redact(c)
	}
}

// Marshal renders c as YAML, as `sluice check` prints it.
func (c *Config) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// maxFileSize bounds every file the config names; they are small text files.
const maxFileSize = 16 << 20

// ReadFile reads a file named by the config: a regular file of at most
// 16 MiB, so that a path such as /dev/zero or a FIFO is an error, not a hang.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d MiB", path, maxFileSize>>20)
	}
	return data, nil
}
