package app

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// cachePurgeCmd removes cached responses from the running sluice (and the
// fleet's shared cache): a host's, or those under a path of it, as
// Varnish's purge does.
func cachePurgeCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("cache purge", stdout, stderr)
	path := fs.String("path", "", "only the responses whose path starts with `PREFIX` (e.g. /api/v3/exchangeInfo)")
	all := fs.Bool("all", false, "every host's responses")
	asJSON := fs.Bool("json", false, "print the admin API's answer (JSON)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 1 || fs.NArg() == 0 && !*all || fs.NArg() == 1 && *all {
		return fmt.Errorf("usage: sluice %s", commands["cache purge"].synopsis)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	q := url.Values{"path": {*path}}
	if *all {
		q.Set("all", "1")
	} else {
		q.Set("host", fs.Arg(0))
	}
	body, err := adminCall(cfg, http.MethodDelete, "/v1/cache?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var a struct {
		Removed       int    `json:"removed"`
		SharedRemoved int    `json:"shared_removed"`
		SharedError   string `json:"shared_error"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return fmt.Errorf("the admin listener's answer: %w", err)
	}
	fmt.Fprintf(stdout, "removed %d cached %s", a.Removed, plural(a.Removed, "response"))
	if cfg.Fleet.Redis != "" {
		fmt.Fprintf(stdout, ", and %d from the fleet's shared cache", a.SharedRemoved)
	}
	fmt.Fprintln(stdout)
	if a.SharedError != "" {
		return fmt.Errorf("the fleet's shared cache: %s", a.SharedError)
	}
	return nil
}
