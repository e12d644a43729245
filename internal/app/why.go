package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"

	"sluice/internal/route"
)

// whyCmd says what sluice does with a request, stage by stage: as the
// running sluice decides it, or, when none answers, as the config file
// would.
func whyCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("why", stdout, stderr)
	client := fs.String("client", "", "the client `NAME` (under clients:) that sends the request, to check its grants and bans")
	asJSON := fs.Bool("json", false, "print the answer as JSON")
	target, rest, done, err := parseVerb(fs, args)
	if done {
		return err
	}
	if len(rest) != 0 && len(rest) != 2 {
		return fmt.Errorf("usage: sluice %s", commands["why"].synopsis)
	}
	q := route.WhyQuery{Target: target, Client: *client}
	if len(rest) == 2 {
		q.Method, q.Path = rest[0], rest[1]
	}
	t, err := loadTable(*cfgPath, nil)
	if err != nil {
		return err
	}
	var a route.WhyAnswer
	source := "the running sluice (" + t.Config.Listen.Admin + ")"
	body, err := adminCall(t.Config, http.MethodGet, "/v1/why?"+url.Values{"target": {q.Target}, "method": {q.Method}, "path": {q.Path}, "client": {q.Client}}.Encode(), nil)
	var ae *adminError
	switch {
	case err == nil:
		if err := json.Unmarshal(body, &a); err != nil {
			return fmt.Errorf("the admin listener's answer: %w", err)
		}
	case errors.As(err, &ae) && ae.code != http.StatusNotFound:
		return err
	default:
		// No running sluice to ask (or one too old to answer): the file decides.
		a = *t.Why(context.Background(), q, nil)
		source = fmt.Sprintf("the config file, not a running sluice (%v); bans not checked", err)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"answered_by": source, "answer": a})
	}
	verdict := "allowed"
	if !a.Allowed {
		verdict = fmt.Sprintf("refused by %s (%d)", a.RefusedBy, a.Status)
	}
	fmt.Fprintf(stdout, "%s %s %s: %s\n", a.Method, a.Target, a.Path, verdict)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, s := range a.Steps {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.Stage, s.Verdict, s.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "(answered by %s)\n", source)
	return nil
}
