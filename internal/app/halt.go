package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"sluice/internal/guardrails"
)

// haltScope is the scope the --client, --group and --all flags name.
func haltScope(client, group string, all bool) (string, error) {
	n := 0
	scope := ""
	if client != "" {
		n, scope = n+1, "client:"+client
	}
	if group != "" {
		n, scope = n+1, "group:"+group
	}
	if all {
		n, scope = n+1, guardrails.HaltAll
	}
	if n != 1 {
		return "", errors.New("give one of --client NAME, --group NAME or --all")
	}
	return scope, nil
}

// haltCmd halts trading in the running sluice: new orders (and with
// --full cancels) of a client, a group or everyone are refused.
func haltCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("halt", stdout, stderr)
	client := fs.String("client", "", "halt the client `NAME`")
	group := fs.String("group", "", "halt every client of the group `NAME`")
	all := fs.Bool("all", false, "halt every client")
	dur := fs.Duration("for", 0, "lift the halt after this long (default: until sluice resume)")
	reason := fs.String("reason", "operator", "why, for the refusals and the log")
	full := fs.Bool("full", false, "refuse cancels too (default: cancels pass, so that bots can flatten their books)")
	fs.Bool("cancel-only", false, "the default: new orders and leverage changes refused, cancels pass")
	list := fs.Bool("list", false, "list the halts in force instead")
	asJSON := fs.Bool("json", false, "print the admin API's JSON answer")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *list {
		body, err := adminCall(cfg, http.MethodGet, "/v1/halts", nil)
		if err != nil {
			return err
		}
		return printResult(stdout, body, *asJSON, func(hs []guardrails.Halt) string {
			if len(hs) == 0 {
				return "no halt in force"
			}
			var b strings.Builder
			tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SCOPE\tMODE\tSINCE\tUNTIL\tREASON")
			for _, h := range hs {
				until := "sluice resume"
				if !h.Until.IsZero() {
					until = h.Until.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.Scope, h.Mode, h.Since.Local().Format(time.DateTime), until, h.Reason)
			}
			tw.Flush()
			return strings.TrimSuffix(b.String(), "\n")
		})
	}
	scope, err := haltScope(*client, *group, *all)
	if err != nil {
		return err
	}
	req := map[string]string{"scope": scope, "reason": *reason, "mode": string(guardrails.CancelOnly)}
	if *full {
		req["mode"] = string(guardrails.Full)
	}
	if *dur > 0 {
		req["duration"] = dur.String()
	}
	body, _ := json.Marshal(req)
	out, err := adminCall(cfg, http.MethodPost, "/v1/halts", body)
	if err != nil {
		return err
	}
	return printResult(stdout, out, *asJSON, func(h struct {
		guardrails.Halt
		FleetError string `json:"fleet_error"`
	}) string {
		s := fmt.Sprintf("halted %s (%s)", h.Scope, h.Mode)
		if !h.Until.IsZero() {
			s += " until " + h.Until.Local().Format(time.DateTime)
		}
		s += ": " + h.Reason
		if h.FleetError != "" {
			s += "\nwarning: " + h.FleetError
		}
		return s
	})
}

// resumeCmd lifts a halt.
func resumeCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("resume", stdout, stderr)
	client := fs.String("client", "", "resume the client `NAME`")
	group := fs.String("group", "", "resume the group `NAME`")
	all := fs.Bool("all", false, "lift the halt of every client (halts of single clients and groups stay)")
	asJSON := fs.Bool("json", false, "print the admin API's JSON answer")
	if done, err := parse(fs, args); done {
		return err
	}
	scope, err := haltScope(*client, *group, *all)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	out, err := adminCall(cfg, http.MethodDelete, "/v1/halts?"+url.Values{"scope": {scope}}.Encode(), nil)
	if err != nil {
		return err
	}
	return printResult(stdout, out, *asJSON, func(map[string]string) string { return "resumed " + scope })
}
