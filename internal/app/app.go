// Package app is sluice's wiring: it parses the command line, loads the
// config, builds the components and runs them. Only this package imports
// every other one.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"sluice/internal/ca"
	"sluice/internal/config"
	"sluice/internal/dialer"
	"sluice/internal/route"
)

const usage = `sluice: an egress gateway for API clients

usage:
  sluice run [-c FILE]                 run the proxy (embedded default config without -c)
  sluice check [-c FILE]               validate a config and print it with defaults filled in
  sluice ca export [-c FILE] [--format pem|p12] [-o FILE]
                                       write the CA certificate clients must trust
  sluice env [-c FILE]                 print shell exports that point clients at sluice
  sluice blobs [-c FILE] ls | rm ID | rm --all | gc
                                       list or remove files in the running sluice's blob store
  sluice bans [-c FILE] ls | add IP [--for 1h] | rm IP
                                       list, add or lift client bans in the running sluice
  sluice reload -c FILE                validate FILE and swap it into the running sluice
  sluice version                       print the version

Each command takes --help.
`

// Run runs the sluice command line args (without the program name).
// It returns when the command is done or, for run, when ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCmd(ctx, rest, stdout, stderr)
	case "check":
		return checkCmd(rest, stdout, stderr)
	case "ca":
		if len(rest) == 0 || rest[0] != "export" {
			if len(rest) > 0 && isHelp(rest[0]) {
				fmt.Fprint(stdout, usage)
				return nil
			}
			return errors.New(`usage: sluice ca export [-c FILE] [--format pem|p12] [-o FILE]`)
		}
		return caExportCmd(rest[1:], stdout, stderr)
	case "env":
		return envCmd(rest, stdout, stderr)
	case "blobs":
		return blobsCmd(rest, stdout, stderr)
	case "bans":
		return bansCmd(rest, stdout, stderr)
	case "reload":
		return reloadCmd(rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "sluice", Version())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func isHelp(s string) bool { return s == "-h" || s == "-help" || s == "--help" || s == "help" }

// flags returns a flag set for a command; --help prints its usage to stdout.
func flags(name, synopsis string, stdout, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "", "config `FILE` (default: the embedded default config)")
	fs.Usage = func() {
		fmt.Fprintf(stdout, "usage: sluice %s\n\n", synopsis)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	return fs, cfgPath
}

// parse parses args; it reports done when --help was asked for.
func parse(fs *flag.FlagSet, args []string) (done bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return true, err
	}
	if fs.NArg() > 0 {
		return true, fmt.Errorf("unexpected argument %q", fs.Arg(0))
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
	fs, cfgPath := flags("check", "check [-c FILE]", stdout, stderr)
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	out, err := cfg.Marshal()
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

func caExportCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("ca export", "ca export [-c FILE] [--format pem|p12] [-o FILE]", stdout, stderr)
	format := fs.String("format", "pem", "`pem` or p12 (a PKCS#12 trust store: the certificate, never the key)")
	outPath := fs.String("o", "", "write to `FILE` instead of standard output")
	password := fs.String("password", "changeit", "password of the p12 trust store (Java's default)")
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	root, err := ca.OpenRoot(cfg.Path(cfg.DataDir), time.Now)
	if err != nil {
		return err
	}
	var data []byte
	switch *format {
	case "pem":
		data = root.CertPEM
	case "p12":
		if data, err = root.PKCS12(*password); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--format %q: want pem or p12", *format)
	}
	if *outPath == "" {
		_, err = stdout.Write(data)
		return err
	}
	return os.WriteFile(*outPath, data, 0o644)
}

// envCmd prints the shell exports that send clients through sluice and
// make them trust its CA: eval "$(sluice env)".
func envCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("env", "env [-c FILE]   (use as: eval \"$(sluice env)\")", stdout, stderr)
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	dir := cfg.Path(cfg.DataDir)
	root, err := ca.OpenRoot(dir, time.Now)
	if err != nil {
		return err
	}
	bundle, err := root.WriteBundle(dir)
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
	}
	for _, v := range vars {
		fmt.Fprintf(stdout, "export %s=%s\n", v[0], shellQuote(v[1]))
	}
	return nil
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

// Version returns the module version and VCS revision sluice was built from.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v + " " + bi.GoVersion
}
