// Package app is sluice's wiring: it parses the command line, loads the
// config, builds the components and runs them. Only this package imports
// every other one.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"sluice/internal/atomicfile"
	"sluice/internal/ca"
	"sluice/internal/config"
	"sluice/internal/dialer"
	"sluice/internal/route"
)

// Run runs the sluice command line args (without the program name).
// It returns when the command is done or, for run, when ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage(""))
		return errors.New("no command given")
	}
	name := args[0]
	if isHelp(name) {
		fmt.Fprint(stdout, usage(""))
		return nil
	}
	if c, ok := commands[name]; ok {
		return c.run(ctx, args[1:], stdout, stderr)
	}
	if !isGroup(name) {
		fmt.Fprint(stderr, usage(""))
		return fmt.Errorf("unknown command %q", name)
	}
	// A group (ca, hosts, ...): its subcommand, or its own usage.
	if len(args) == 1 || isHelp(args[1]) {
		if len(args) > 1 {
			fmt.Fprint(stdout, usage(name))
			return nil
		}
		fmt.Fprint(stderr, usage(name))
		return fmt.Errorf("sluice %s needs a subcommand", name)
	}
	if c, ok := commands[name+" "+args[1]]; ok {
		return c.run(ctx, args[2:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage(name))
	return fmt.Errorf("unknown command %q", name+" "+args[1])
}

// usage lists the commands (of group, or all of them), generated from
// the command table.
func usage(group string) string {
	var b strings.Builder
	if group == "" {
		b.WriteString("sluice: an egress gateway for API clients\n\nusage:\n")
	} else {
		fmt.Fprintf(&b, "usage of sluice %s:\n", group)
	}
	for _, c := range commandTable {
		if group != "" && !strings.HasPrefix(c.name, group+" ") {
			continue
		}
		what, _, _ := strings.Cut(c.what, ". ")
		fmt.Fprintf(&b, "  sluice %s\n      %s\n", c.synopsis, strings.TrimSuffix(what, "."))
	}
	b.WriteString("\nEach command takes --help.\n")
	return b.String()
}

func isGroup(name string) bool {
	return slices.ContainsFunc(commandTable, func(c command) bool { return strings.HasPrefix(c.name, name+" ") })
}

func isHelp(s string) bool { return s == "-h" || s == "-help" || s == "--help" || s == "help" }

// command is a command line: what --help says of it, and what runs it.
type command struct {
	name     string // "run", or a group's "ca export"
	synopsis string // after "sluice "
	what     string
	example  string
	run      func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// plain adapts a command that needs no context.
func plain(f func(args []string, stdout, stderr io.Writer) error) func(context.Context, []string, io.Writer, io.Writer) error {
	return func(_ context.Context, args []string, stdout, stderr io.Writer) error { return f(args, stdout, stderr) }
}

// commandTable is every command, in the order usage lists them.
var commandTable = []command{
	{"run", "run [-c FILE]", "Run the gateway until SIGINT or SIGTERM; SIGHUP re-reads the config.", "sluice run -c /etc/sluice/sluice.yaml", runCmd},
	{"check", "check [-c FILE] [--expand]", "Validate a config (the same checks run, SIGHUP and PUT /config make) and print it with the defaults filled in; --expand prints each host's effective cache, budget and rules instead.", "sluice check -c sluice.yaml --expand", plain(checkCmd)},
	{"init", "init [--from-api-list FILE] [--transparent [--address IP]] [-o FILE]", "Write a commented starter config: the embedded default's hosts, or those of an old stack's api-list with the profile sluice knows for each; --transparent adds the DNS and transparent listeners and the firewall line to run.", "sluice init --from-api-list freqcache/5_ca/api-list -o sluice.yaml", plain(initCmd)},
	{"env", "env [-c FILE] [--format sh|dotenv|systemd|json]", "Print the environment that points clients at sluice and makes them trust its CA.", `eval "$(sluice env)"`, plain(envCmd)},
	{"ca export", "ca export [-c FILE] [--format pem|der|bundle|p12] [-o FILE]", "Write the CA certificate that clients must trust (never its key).", "sluice ca export --format p12 -o sluice-ca.p12", plain(caExportCmd)},
	{"ca trust", "ca trust [-c FILE] [--system] [--python PATH]... [--java [--keystore FILE]] [--nss DIR]... [--json]", "Install sluice's CA in trust stores: the system's (Debian/Ubuntu, Alpine, RHEL/Fedora; the default), a Python environment's certifi bundle, a Java keystore, an NSS database. Running it again changes nothing; sluice ca untrust takes it out.", "sluice ca trust --system --python ~/freqtrade/.venv/bin/python", plain(caTrustCmd("ca trust", false))},
	{"ca untrust", "ca untrust [-c FILE] [--system] [--python PATH]... [--java [--keystore FILE]] [--nss DIR]... [--json]", "Remove sluice's CA from the trust stores sluice ca trust installed it in (the same flags).", "sluice ca untrust --python ~/freqtrade/.venv/bin/python", plain(caTrustCmd("ca untrust", true))},
	{"ca import", "ca import CERT KEY [-c FILE] [--force]", "Make an existing CA sluice's (a fleet's shared CA, or the one an old stack's clients already trust): its certificate and unencrypted key (ECDSA, or RSA of 2048 bits or more) are checked and copied into the data dir.", "sluice ca import freqcache/ca.crt freqcache/ca.key", plain(caImportCmd)},
	{"clients cert", "clients cert NAME [-c FILE] [-o DIR] [--valid 8760h]", "Mint a client certificate from sluice's CA for a client with certificate: true (its common name is NAME); the client presents it on the HTTPS-proxy listener instead of a password.", "sluice clients cert bot3 -o /etc/bots/bot3", plain(clientsCertCmd)},
	{"hosts suggest", "hosts suggest [LOG_FILE...]", "Turn the lines that report mode (policy: report, or an entry's mode: report) logged into a hosts section, each host with the profile the embedded default gives it; reads stdin without a file.", "sluice hosts suggest /var/log/sluice/sluice.log > hosts.yaml",
		func(_ context.Context, args []string, stdout, stderr io.Writer) error {
			return hostsSuggestCmd(args, os.Stdin, stdout, stderr)
		}},
	{"doctor", "doctor [-c FILE] [--url URL] [--python PATH] [--json]", "Check, in a client's shell, whether its clients go through sluice with a verified certificate: the proxy and CA variables, whether each CA file holds sluice's CA, and one request per runtime (curl, Python requests, aiohttp as ccxt's async client opens it, Node's fetch); each failure with the line that fixes it; exit 1 if one failed.", "sluice doctor --python ~/freqtrade/.venv/bin/python", plain(doctorCmd)},
	{"why", "why HOST[:PORT] [METHOD PATH] [-c FILE] [--client NAME] [--json]", "Say what sluice does with a request to HOST (port 443, or 80 for plain HTTP) and why, stage by stage: refused by which stage and which config key would change it, or allowed and how it is cached and budgeted; the running sluice answers, or the config file when none runs.", "sluice why api.binance.com POST /sapi/v1/capital/withdraw/apply --client bot1", plain(whyCmd)},
	{"cache purge", "cache purge (HOST | --all) [--path PREFIX] [-c FILE] [--json]", "Remove cached responses from the running sluice and the fleet's shared cache: HOST's (its name, any port; or HOST:PORT), or only those under a path of it; the next request fetches anew.", "sluice cache purge api.binance.com --path /api/v3/exchangeInfo", plain(cachePurgeCmd)},
	{"log", "log [-c FILE] [--follow] [--refused] [--host HOST] [--json]", "Print the running sluice's access lines: the last 200 it kept and, with --follow, each new one as its request ends (every line, whatever log.level lets through to the log), like varnishlog.", "sluice log --follow --refused", plain(logCmd)},
	{"halt", "halt (--client NAME | --group NAME | --all) [--for DURATION] [--reason TEXT] [--full] [-c FILE] [--json], or halt --list", "Halt trading in the running sluice: new orders and leverage changes of the client, group or everyone are refused at once (cancels pass, so bots can flatten their books; --full refuses them too), until sluice resume or --for has passed.", "sluice halt --all --reason \"exchange incident\"", plain(haltCmd)},
	{"resume", "resume (--client NAME | --group NAME | --all) [-c FILE] [--json]", "Lift a halt that sluice halt put in force.", "sluice resume --all", plain(resumeCmd)},
	{"status", "status [-c FILE] [--watch] [--interval 1s] [--json]", "Print the running sluice's dashboard in the terminal (the numbers of the admin listener's page: requests per second by outcome, hit ratio, upstream calls saved, budgets, the last refusals, bans, blob downloads, DNS pins); --watch redraws it every interval.", "sluice status --watch", statusCmd},
	{"health", "health [-c FILE] [--json]", "Ask the running sluice's admin listener whether it serves (GET /healthz); exit 0 if it does, 1 with the reason if not: a container or load balancer health check.", "sluice health -c /etc/sluice/sluice.yaml", plain(healthCmd)},
	{"reload", "reload -c FILE [--json]", "Validate FILE and swap it into the running sluice, or keep the running config and say why.", "sluice reload -c /etc/sluice/sluice.yaml", plain(reloadCmd)},
	{"blobs", "blobs [-c FILE] [--json] ls | rm KEY_OR_DIGEST | rm --all | gc", "List or remove files in the running sluice's blob store.", "sluice blobs rm --all", plain(blobsCmd)},
	{"bans", "bans [-c FILE] [--json] ls | add IP [--for 1h] [--reason TEXT] | rm IP", "List, add or lift client bans in the running sluice.", "sluice bans add 203.0.113.7 --for 1h --reason scraping", plain(bansCmd)},
	{"dns", "dns [-c FILE] [--json] pins | accept HOST", "List the running sluice's DNS pins (the upstream addresses it uses, and answers that disagreed), or move HOST's pin to the answer that disagreed.", "sluice dns accept api.binance.com", plain(dnsCmd)},
	{"firewall", "firewall [-c FILE] (--clients CIDR... | --clients-iface NAME) [--format nft|iptables] [--uid N] [--docker]", "Print packet filter rules for the gateway host: clients reach only sluice's listeners and are forwarded nowhere; sluice goes out only to its hosts' ports, its resolvers and (without --uid) NTP. Apply with nft -f, or with --format iptables a script for sh; applying again changes nothing.", "sluice firewall -c /etc/sluice/sluice.yaml --clients 172.30.0.0/24 | nft -f -", plain(firewallCmd)},
	{"fleet", "fleet --base CONFIG.json (--strategies DIR | --split N) [-o DIR] [--proxy URL] [--ca FILE] [--dns IP]", "Write a freqtrade config per bot (one per strategy file, or the base's pair whitelist split across N bots), each with its own name and database and the ccxt settings that send both its clients through sluice, and compose.fleet.yaml that puts them on deploy/compose.yaml's internal network.", "sluice fleet --base user_data/config.json --split 4 -o user_data/fleet", plain(fleetCmd)},
	{"version", "version [--json]", "Print the module version, VCS revision and Go version sluice was built from.", "sluice version", plain(versionCmd)},
}

// commands are commandTable by name (filled in init: the commands look
// their own synopsis up in it).
var commands = map[string]command{}

func init() {
	for _, c := range commandTable {
		commands[c.name] = c
	}
}

func versionCmd(args []string, stdout, stderr io.Writer) error {
	fs, _ := flags("version", stdout, stderr)
	asJSON := fs.Bool("json", false, "print the version, revision and Go version as JSON")
	if done, err := parse(fs, args); done {
		return err
	}
	if *asJSON {
		b := BuildInfo()
		return json.NewEncoder(stdout).Encode(map[string]string{"version": b.Version, "revision": b.Revision, "go": b.GoVersion})
	}
	fmt.Fprintln(stdout, "sluice", Version())
	return nil
}

// flags returns the flag set of a command (which must be in commands):
// flags may come before, between or after its arguments, and --help
// prints what the command does, its flags and an example to stdout.
func flags(name string, stdout, stderr io.Writer) (*pflag.FlagSet, *string) {
	c := commands[name]
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	cfgPath := new(string)
	if strings.Contains(c.synopsis, "-c FILE") {
		fs.StringVarP(cfgPath, "config", "c", "", "config `FILE` (default: the embedded default config)")
	}
	fs.Usage = func() {
		flagText := fs.FlagUsages()
		if flagText == "" {
			flagText = "  none\n"
		}
		fmt.Fprintf(stdout, "usage: sluice %s\n\n%s\n\nflags:\n%s\nexample:\n  %s\n", c.synopsis, c.what, flagText, c.example)
	}
	return fs, cfgPath
}

// parseFlags parses args of a command that takes operands as well; it
// reports done when --help was asked for, or with err.
func parseFlags(fs *pflag.FlagSet, args []string) (done bool, err error) {
	if err := fs.Parse(args); err != nil {
		return true, helpIsNoError(err)
	}
	return false, nil
}

func helpIsNoError(err error) error {
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	return err
}

// parse parses args of a command that takes no arguments; it reports done
// when --help was asked for, or with err.
func parse(fs *pflag.FlagSet, args []string) (done bool, err error) {
	if done, err := parseFlags(fs, args); done {
		return true, err
	}
	if fs.NArg() > 0 {
		return true, fmt.Errorf("unexpected argument %q (see sluice %s --help)", fs.Arg(0), fs.Name())
	}
	return false, nil
}

// loadTable loads and compiles path, or the embedded default when path is
// empty; d dials the upstreams (nil: a dialer of its own).
func loadTable(path string, d *dialer.Dialer) (*route.Table, error) {
	if path == "" {
		return route.Default(d)
	}
	return route.Load(path, d)
}

// loadConfig loads path as loadTable does, for the commands that need only
// the config's values: a file they read is one run accepts.
func loadConfig(path string) (*config.Config, error) {
	t, err := loadTable(path, nil)
	if err != nil {
		return nil, err
	}
	return t.Config, nil
}

func checkCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("check", stdout, stderr)
	expand := fs.Bool("expand", false, "print each host's effective cache, budget and rule settings, its profile's merged in")
	if done, err := parse(fs, args); done {
		return err
	}
	t, err := loadTable(*cfgPath, nil)
	if err != nil {
		return err
	}
	if *expand {
		enc := yaml.NewEncoder(stdout)
		enc.SetIndent(2)
		if err := enc.Encode(map[string]any{"hosts": t.Expanded()}); err != nil {
			return err
		}
		return enc.Close()
	}
	out, err := t.Config.Marshal()
	if err != nil {
		return err
	}
	if _, err = stdout.Write(out); err != nil {
		return err
	}
	return writeProfileSources(stdout, t.Config)
}

// writeProfileSources ends check's output with where each host entry's
// profile came from, as YAML comments: an entry that names no profile
// still gets the one the embedded default knows for its host.
func writeProfileSources(w io.Writer, c *config.Config) error {
	var b strings.Builder
	b.WriteString("# Where each host's profile comes from:\n")
	for _, pattern := range slices.Sorted(maps.Keys(c.Hosts)) {
		h := c.Hosts[pattern]
		if h.Mode == config.ModeTunnel || h.Mode == config.ModeDeny {
			continue
		}
		profile := h.Profile
		if profile == "" {
			profile = config.ProfileNone
		}
		fmt.Fprintf(&b, "#   %s: %s (%s)\n", pattern, profile, h.ProfileFrom)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// envCmd prints the shell exports that send clients through sluice and
// make them trust its CA: eval "$(sluice env)".
func envCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("env", stdout, stderr)
	format := fs.String("format", "sh", "`sh` (export lines for eval), dotenv (KEY=value, for compose env_file), systemd (Environment= lines) or json (one object)")
	if done, err := parse(fs, args); done {
		return err
	}
	line, ok := envFormats[*format]
	if !ok {
		return fmt.Errorf("--format %q: want sh, dotenv, systemd or json", *format)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	certPEM, dir, err := caCertificate(cfg)
	if err != nil {
		return err
	}
	bundle, err := writeBundle(certPEM, dir)
	if err != nil {
		return err
	}
	proxyURL := "http://" + clientAddr(cfg.Listen.Proxy)
	vars := [][2]string{
		{"HTTPS_PROXY", proxyURL}, {"https_proxy", proxyURL},
		{"HTTP_PROXY", proxyURL}, {"http_proxy", proxyURL},
		{"NO_PROXY", "localhost,127.0.0.1,::1"}, {"no_proxy", "localhost,127.0.0.1,::1"},
		{"SSL_CERT_FILE", bundle}, {"REQUESTS_CA_BUNDLE", bundle}, {"CURL_CA_BUNDLE", bundle},
		{"NODE_EXTRA_CA_CERTS", bundle},
		{"NODE_USE_ENV_PROXY", "1"}, // Node 22.21+/24.5+: honour HTTPS_PROXY in fetch and https
		{"GIT_SSL_CAINFO", bundle}, {"PIP_CERT", bundle}, {"AWS_CA_BUNDLE", bundle},
	}
	if line == nil { // json
		m := map[string]string{}
		for _, v := range vars {
			m[v[0]] = v[1]
		}
		return json.NewEncoder(stdout).Encode(m)
	}
	for _, v := range vars {
		fmt.Fprintln(stdout, line(v[0], v[1]))
	}
	return nil
}

// caCertificate returns sluice's CA certificate (PEM) for a command run
// in a client's shell, and the data dir it came from. A user who cannot
// read the data dir (sluice runs as its own user under the shipped
// systemd unit, its state 0700) gets it from the running sluice's admin
// listener instead (/ca.pem needs no token), and dir "".
func caCertificate(cfg *config.Config) (certPEM []byte, dir string, err error) {
	dir = cfg.Path(cfg.DataDir)
	root, err := ca.OpenRoot(dir, time.Now)
	if err == nil {
		return root.CertPEM, dir, nil
	}
	if !errors.Is(err, fs.ErrPermission) {
		return nil, "", err
	}
	client, base, aerr := adminEndpoint(cfg, 10*time.Second)
	if aerr != nil {
		return nil, "", fmt.Errorf("%w; and the running sluice cannot be asked: %v", err, aerr)
	}
	resp, gerr := client.Get(base + "/ca.pem")
	if gerr != nil {
		return nil, "", fmt.Errorf("%w; and the admin listener %s did not answer: %v (is sluice running?)", err, cfg.Listen.Admin, gerr)
	}
	defer resp.Body.Close()
	certPEM, gerr = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if gerr == nil && resp.StatusCode != http.StatusOK {
		gerr = errors.New(resp.Status)
	}
	if gerr == nil {
		_, gerr = ca.ParseCertPEM(certPEM)
	}
	if gerr != nil {
		return nil, "", fmt.Errorf("%w; and GET %s/ca.pem: %v", err, base, gerr)
	}
	return certPEM, "", nil
}

// writeBundle writes the system roots and certPEM to the data dir, or,
// where that is not this user's to write (dir "" or not writable), to the
// user's cache dir, and returns the path.
func writeBundle(certPEM []byte, dir string) (string, error) {
	data, err := ca.Bundle(certPEM)
	if err != nil {
		return "", err
	}
	if dir != "" {
		path := ca.BundlePath(dir)
		if err := atomicfile.Write(path, data, 0o644); !errors.Is(err, fs.ErrPermission) {
			return path, err
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no place for the CA bundle: the data dir is not writable, and %w", err)
	}
	cache = filepath.Join(cache, "sluice")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	path := ca.BundlePath(cache)
	return path, atomicfile.Write(path, data, 0o644)
}

// clientAddr turns a listen address into one a local client can dial.
func clientAddr(listen string) string {
	for _, any := range []string{"0.0.0.0:", "[::]:"} {
		if port, ok := strings.CutPrefix(listen, any); ok {
			return "127.0.0.1:" + port
		}
	}
	return listen
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// envFormats write one variable of sluice env: for a shell, a compose
// env_file (taken literally, unquoted) and a systemd unit (quoted).
var envFormats = map[string]func(k, v string) string{
	"sh":      func(k, v string) string { return "export " + k + "=" + shellQuote(v) },
	"dotenv":  func(k, v string) string { return k + "=" + v },
	"systemd": func(k, v string) string { return "Environment=" + strconv.Quote(k+"="+v) },
	"json":    nil, // one object
}

// Set at link time where the build has no module version or VCS stamp
// (a tarball, -buildvcs=false): go build -ldflags "-X
// sluice/internal/app.linkVersion=v1.2.3 -X sluice/internal/app.linkRevision=abc123".
var linkVersion, linkRevision string

// Build is what sluice was built from.
type Build struct {
	Version   string // the module version, "(devel)" for a plain build of a checkout
	Revision  string // the VCS revision, "+modified" when the tree had changes; "unknown" without
	GoVersion string
}

// BuildInfo reads the module version, VCS revision and Go version from
// the binary, falling back to the values set at link time.
func BuildInfo() Build {
	b := Build{Version: linkVersion, Revision: linkRevision, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && (bi.Main.Version != "(devel)" || b.Version == "") {
			b.Version = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified {
			b.Revision += "+modified"
		}
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	if b.Revision == "" {
		b.Revision = "unknown"
	}
	return b
}

// Version is BuildInfo in one line: "v1.2.3 abc123 go1.26.8".
func Version() string {
	b := BuildInfo()
	return b.Version + " " + b.Revision + " " + b.GoVersion
}
