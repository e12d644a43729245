package app

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"sluice/internal/config"
	"sluice/internal/dashboard"
	"sluice/internal/resolve"
	"sluice/internal/store"
)

// adminToken returns the admin API's bearer token from DATA_DIR/admin.token,
// creating it (0600) at first start. A token readable by others is refused,
// as the CA key is.
func adminToken(dataDir string, create bool) (string, error) {
	path := filepath.Join(dataDir, "admin.token")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		b := make([]byte, 32)
		rand.Read(b)
		tok := hex.EncodeToString(b)
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return "", err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", err
		}
		_, err = f.WriteString(tok + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return tok, err
	}
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %04o): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	return strings.TrimSpace(string(data)), nil
}

// adminCall sends one request to the running sluice's admin listener,
// with the token from the data dir, and returns the body of a 200.
func adminCall(cfg *config.Config, method, path string, body []byte) ([]byte, error) {
	resp, err := adminRequest(cfg, 30*time.Second, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// adminRequest is adminCall's request, its answer left to read (timeout
// 0: none, for a stream); an answer other than 200 is an *adminError.
func adminRequest(cfg *config.Config, timeout time.Duration, method, path string, body []byte) (*http.Response, error) {
	client, base, err := adminEndpoint(cfg, timeout)
	if err != nil {
		return nil, err
	}
	tok, err := adminToken(cfg.Path(cfg.DataDir), false)
	if errors.Is(err, os.ErrNotExist) {
		// The running sluice may keep its data elsewhere (a config being
		// reloaded that moves data_dir): it says where.
		if dir, herr := runningDataDir(client, base); herr == nil && dir != "" {
			tok, err = adminToken(dir, false)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	req, err := http.NewRequest(method, base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin listener %s: %w (is sluice running?)", cfg.Listen.Admin, err)
	}
	if resp.StatusCode != http.StatusOK {
		out, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil, &adminError{status: resp.Status, code: resp.StatusCode, body: bytes.TrimSpace(out)}
	}
	return resp, nil
}

// adminError is an admin API answer other than 200.
type adminError struct {
	status string
	code   int
	body   []byte
}

func (e *adminError) Error() string { return fmt.Sprintf("admin listener: %s: %s", e.status, e.body) }

// runningDataDir asks the admin listener at base where the running
// sluice keeps its data (GET /healthz needs no token).
func runningDataDir(client *http.Client, base string) (string, error) {
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var h struct {
		DataDir string `json:"data_dir"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&h)
	return h.DataDir, err
}

// reloadCmd sends the config file to the running sluice, which validates
// it whole (its relative paths against the file's directory) and swaps it
// in, or keeps the running one and says why.
func reloadCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("reload", stdout, stderr)
	jsonOut := fs.Bool("json", false, "print the admin API's JSON answer")
	if done, err := parse(fs, args); done {
		return err
	}
	if *cfgPath == "" {
		return errors.New("usage: sluice " + commands["reload"].synopsis)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w\nnothing was sent: the running config stays", err)
	}
	data, err := config.ReadFile(*cfgPath)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(filepath.Dir(*cfgPath))
	if err != nil {
		return err
	}
	out, err := adminCall(cfg, http.MethodPut, "/config?dir="+url.QueryEscape(dir), data)
	if ae, ok := errors.AsType[*adminError](err); ok && ae.code == http.StatusBadRequest {
		var refusal struct{ Errors []string }
		if json.Unmarshal(ae.body, &refusal) == nil && len(refusal.Errors) > 0 {
			return fmt.Errorf("the running sluice refused the config; the running config stays:\n%s", strings.Join(refusal.Errors, "\n"))
		}
		return fmt.Errorf("%w\nthe running config stays", err)
	}
	if err != nil {
		return err
	}
	if *jsonOut {
		_, err = stdout.Write(out)
		return err
	}
	var res struct {
		Status      string   `json:"status"`
		RestartOnly []string `json:"restart_only"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return err
	}
	fmt.Fprintln(stdout, res.Status)
	for _, k := range res.RestartOnly {
		fmt.Fprintf(stdout, "changed %s: takes effect after a restart\n", k)
	}
	return nil
}

// printResult writes an admin API answer: as it came with --json, else
// the sentence human makes of it (decoded into v).
func printResult[T any](stdout io.Writer, body []byte, jsonOut bool, human func(T) string) error {
	if jsonOut {
		_, err := stdout.Write(body)
		return err
	}
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("the admin listener's answer: %w", err)
	}
	_, err := fmt.Fprintln(stdout, human(v))
	return err
}

// bansCmd lists, adds or lifts client bans: sluice bans ls | add IP | rm IP.
func bansCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("bans", stdout, stderr)
	dur := fs.Duration("for", time.Hour, "with add: how long the ban lasts")
	reason := fs.String("reason", "operator", "with add: why")
	jsonOut := fs.Bool("json", false, "print the admin API's JSON answer instead of a table")
	cfg, verb, operands, done, err := adminVerb(fs, cfgPath, args)
	if done {
		return err
	}
	var out []byte
	switch {
	case verb == "ls" && len(operands) == 0:
		if out, err = adminCall(cfg, http.MethodGet, "/bans", nil); err != nil {
			return err
		}
		if *jsonOut {
			_, err = stdout.Write(out)
			return err
		}
		var bans []struct {
			Client string    `json:"client"`
			Until  time.Time `json:"until"`
			Reason string    `json:"reason"`
		}
		if err := json.Unmarshal(out, &bans); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CLIENT\tUNTIL\tREASON")
		for _, b := range bans {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", b.Client, b.Until.Format(time.RFC3339), b.Reason)
		}
		return tw.Flush()
	case verb == "add" && len(operands) == 1:
		body, _ := json.Marshal(map[string]string{"client": operands[0], "duration": dur.String(), "reason": *reason})
		if out, err = adminCall(cfg, http.MethodPost, "/bans", body); err != nil {
			return err
		}
		return printResult(stdout, out, *jsonOut, func(bans []store.Ban) string {
			for _, b := range bans {
				if b.Client == operands[0] {
					return fmt.Sprintf("banned %s until %s (%s)", b.Client, b.Until.Format(time.RFC3339), b.Reason)
				}
			}
			return "banned " + operands[0]
		})
	case verb == "rm" && len(operands) == 1:
		if out, err = adminCall(cfg, http.MethodDelete, "/bans/"+operands[0], nil); err != nil {
			return err
		}
		return printResult(stdout, out, *jsonOut, func(map[string]string) string { return "lifted the ban of " + operands[0] })
	}
	return errors.New("usage: sluice " + commands["bans"].synopsis)
}

func dnsCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("dns", stdout, stderr)
	jsonOut := fs.Bool("json", false, "print the admin API's JSON answer instead of a table")
	cfg, verb, operands, done, err := adminVerb(fs, cfgPath, args)
	if done {
		return err
	}
	switch {
	case verb == "pins" && len(operands) == 0:
		out, err := adminCall(cfg, http.MethodGet, "/dns/pins", nil)
		if ae := (*adminError)(nil); errors.As(err, &ae) && ae.code == http.StatusNotFound {
			return errors.New("the running sluice pins no DNS answers (dns.pin: off; it is first by default once listen.dns or a transparent listener is on)")
		}
		if err != nil || *jsonOut {
			if err == nil {
				_, err = stdout.Write(out)
			}
			return err
		}
		var pins []resolve.Pin
		if err := json.Unmarshal(out, &pins); err != nil {
			return err
		}
		if len(pins) == 0 {
			_, err := fmt.Fprintln(stdout, "no DNS pins yet: a host is pinned when sluice first resolves it")
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOST\tPINNED\tSINCE\tDISAGREEING ANSWER")
		for _, p := range pins {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Host, joinAddrs(p.Addrs), p.Since.Format(time.RFC3339), cmp.Or(joinAddrs(p.Disagreeing), "-"))
		}
		return tw.Flush()
	case verb == "accept" && len(operands) == 1:
		out, err := adminCall(cfg, http.MethodPost, "/dns/pins/"+url.PathEscape(operands[0])+"/accept", nil)
		if err != nil {
			return err
		}
		return printResult(stdout, out, *jsonOut, func(p resolve.Pin) string {
			return fmt.Sprintf("%s is pinned to %s now", p.Host, joinAddrs(p.Addrs))
		})
	}
	return errors.New("usage: sluice " + commands["dns"].synopsis)
}

func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// adminVerb parses a command that talks to the running sluice (NAME VERB
// [OPERANDS], flags anywhere) and loads the config that locates it.
func adminVerb(fs *pflag.FlagSet, cfgPath *string, args []string) (*config.Config, string, []string, bool, error) {
	verb, operands, done, err := parseVerb(fs, args)
	if done {
		return nil, "", nil, true, err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return nil, "", nil, true, err
	}
	return cfg, verb, operands, false, nil
}

// parseVerb parses a command of the form NAME VERB [OPERANDS], its flags
// anywhere among them. done reports that the command is over (--help, or err).
func parseVerb(fs *pflag.FlagSet, args []string) (verb string, operands []string, done bool, err error) {
	if done, err := parseFlags(fs, args); done {
		return "", nil, true, err
	}
	if fs.NArg() == 0 {
		return "", nil, true, errors.New("usage: sluice " + commands[fs.Name()].synopsis)
	}
	return fs.Arg(0), fs.Args()[1:], false, nil
}

// adminEndpoint is the running sluice's admin listener as a local client
// reaches it, and a client for it that never goes through a proxy from
// the environment.
func adminEndpoint(cfg *config.Config, timeout time.Duration) (*http.Client, string, error) {
	if cfg.Listen.Admin == config.Off {
		return nil, "", errors.New("listen.admin is off: this command talks to the running sluice through it")
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{}}, "http://" + clientAddr(cfg.Listen.Admin), nil
}

// healthCmd asks the running sluice's /healthz: nil while it serves.
func healthCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("health", stdout, stderr)
	asJSON := fs.Bool("json", false, "print /healthz's JSON answer")
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, client, base, err := adminOf(*cfgPath)
	if err != nil {
		return err
	}
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		return fmt.Errorf("admin listener %s: %w (is sluice running?)", cfg.Listen.Admin, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if *asJSON {
		stdout.Write(body)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sluice is not serving: %s %s", resp.Status, bytes.TrimSpace(body))
	}
	if !*asJSON {
		fmt.Fprintln(stdout, "ok")
	}
	return nil
}

// statusCmd prints the running sluice's dashboard numbers: one screen,
// again every interval with --watch, or the JSON with --json.
func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("status", stdout, stderr)
	watch := fs.Bool("watch", false, "refresh until interrupted")
	every := fs.Duration("interval", time.Second, "with --watch: how often")
	jsonOut := fs.Bool("json", false, "print the admin API's JSON (GET /status) instead")
	if done, err := parse(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return errors.New("usage: sluice " + commands["status"].synopsis)
	}
	if *every <= 0 {
		return errors.New("--interval must be positive")
	}
	cfg, client, base, err := adminOf(*cfgPath)
	if err != nil {
		return err
	}
	for {
		body, err := fetchStatus(ctx, client, base+"/status")
		if err != nil && *watch && ctx.Err() != nil {
			return nil // interrupted while fetching: the watch is over, not failed
		}
		if err != nil {
			return fmt.Errorf("admin listener %s: %w (is sluice running?)", cfg.Listen.Admin, err)
		}
		if *jsonOut {
			if _, err := stdout.Write(body); err != nil {
				return err
			}
		} else {
			var st dashboard.Status
			if err := json.Unmarshal(body, &st); err != nil {
				return fmt.Errorf("GET /status: %w", err)
			}
			if *watch {
				io.WriteString(stdout, "\x1b[H\x1b[2J") // home and clear: the screen is redrawn in place
			}
			if err := st.WriteText(stdout); err != nil {
				return err
			}
		}
		if !*watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}

func fetchStatus(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /status: %s %s", resp.Status, bytes.TrimSpace(body))
	}
	return body, err
}

// adminOf loads the config at cfgPath and returns the running sluice's
// admin listener for the calls that need no token (5 s each).
func adminOf(cfgPath string) (*config.Config, *http.Client, string, error) {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		return nil, nil, "", err
	}
	client, base, err := adminEndpoint(cfg, 5*time.Second)
	return cfg, client, base, err
}
