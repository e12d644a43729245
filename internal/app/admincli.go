package app

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/internal/config"
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
	if cfg.Listen.Admin == config.Off {
		return nil, errors.New("listen.admin is off: this command talks to the running sluice through it")
	}
	tok, err := adminToken(cfg.Path(cfg.DataDir), false)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	req, err := http.NewRequest(method, "http://"+clientAddr(cfg.Listen.Admin)+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}} // never via a proxy from the environment
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin listener %s: %w (is sluice running?)", cfg.Listen.Admin, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin listener: %s: %s", resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// reloadCmd sends the config file to the running sluice, which validates
// it whole and swaps it in, or keeps the running one and says why.
func reloadCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("reload", "reload -c FILE", stdout, stderr)
	if done, err := parse(fs, args); done {
		return err
	}
	if *cfgPath == "" {
		return errors.New("usage: sluice reload -c FILE")
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	data, err := config.ReadFile(*cfgPath)
	if err != nil {
		return err
	}
	out, err := adminCall(cfg, http.MethodPut, "/config", data)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// bansCmd lists, adds or lifts client bans: sluice bans ls | add IP | rm IP.
func bansCmd(args []string, stdout, stderr io.Writer) error {
	const synopsis = "bans [-c FILE] ls | add IP [--for 1h] [--reason TEXT] | rm IP"
	fs, cfgPath := flags("bans", synopsis, stdout, stderr)
	dur := fs.Duration("for", time.Hour, "with add: how long the ban lasts")
	reason := fs.String("reason", "operator", "with add: why")
	verb, operands, done, err := parseVerb(fs, args, synopsis)
	if done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	var out []byte
	switch {
	case verb == "ls" && len(operands) == 0:
		if out, err = adminCall(cfg, http.MethodGet, "/bans", nil); err != nil {
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
		out, err = adminCall(cfg, http.MethodPost, "/bans", body)
	case verb == "rm" && len(operands) == 1:
		out, err = adminCall(cfg, http.MethodDelete, "/bans/"+operands[0], nil)
	default:
		return errors.New("usage: sluice " + synopsis)
	}
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// parseVerb parses a command of the form NAME [flags] VERB [flags]
// [OPERANDS]: flags may come before or after the verb. done reports that
// the command is over (--help, or err).
func parseVerb(fs *flag.FlagSet, args []string, synopsis string) (verb string, operands []string, done bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", nil, true, nil
		}
		return "", nil, true, err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return "", nil, true, errors.New("usage: sluice " + synopsis)
	}
	if err := fs.Parse(rest[1:]); err != nil {
		return "", nil, true, err
	}
	return rest[0], fs.Args(), false, nil
}
