package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sluice/internal/blobs"
	"sluice/internal/dashboard"
	"strconv"
	"text/tabwriter"
	"time"
)

// blobsCmd lists or removes blob store entries through the running
// sluice's admin listener: sluice blobs ls | rm ID | rm --all | gc.
func blobsCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("blobs", stdout, stderr)
	all := fs.Bool("all", false, "with rm: remove every entry")
	jsonOut := fs.Bool("json", false, "print the admin API's JSON answer instead of a table")
	cfg, verb, operands, done, err := adminVerb(fs, cfgPath, args)
	if done {
		return err
	}
	var method, path string
	switch {
	case verb == "ls" && len(operands) == 0:
		method, path = http.MethodGet, "/v1/blobs"
	case verb == "rm" && *all && len(operands) == 0:
		method, path = http.MethodDelete, "/v1/blobs?all=1"
	case verb == "rm" && !*all && len(operands) == 1:
		method, path = http.MethodDelete, "/v1/blobs?id="+url.QueryEscape(operands[0])
	case verb == "gc" && len(operands) == 0:
		method, path = http.MethodPost, "/v1/blobs/gc"
	default:
		return errors.New("usage: sluice " + commands["blobs"].synopsis)
	}
	body, err := adminCall(cfg, method, path, nil)
	if err != nil {
		return err
	}
	switch {
	case verb == "rm":
		return printResult(stdout, body, *jsonOut, func(a struct{ Removed int }) string {
			return fmt.Sprintf("removed %d %s", a.Removed, plural(a.Removed, "file"))
		})
	case verb == "gc":
		return printResult(stdout, body, *jsonOut, func(a struct {
			Freed int64 `json:"freed_bytes"`
		}) string {
			return fmt.Sprintf("freed %d bytes (%.1f MiB)", a.Freed, float64(a.Freed)/(1<<20))
		})
	case *jsonOut:
		_, err := stdout.Write(body)
		return err
	}
	var list struct {
		Bytes   int64 `json:"bytes"`
		Files   int   `json:"files"`
		Entries []struct {
			Key    string    `json:"key"`
			Digest string    `json:"digest"`
			Size   int64     `json:"size"`
			Used   time.Time `json:"used"`
		} `json:"entries"`
		Downloads []blobs.Progress `json:"downloads"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SIZE\tDIGEST\tLAST USED\tURL")
	for _, e := range list.Entries {
		fmt.Fprintf(tw, "%d\tsha256:%s\t%s\t%s\n", e.Size, e.Digest[:12], e.Used.Format(time.RFC3339), e.Key)
	}
	fmt.Fprintf(tw, "%d bytes in %d files\n", list.Bytes, list.Files)
	if len(list.Downloads) > 0 {
		fmt.Fprintln(tw, "\nDOWNLOADING\tOF\tRATE\tREADERS\tURL")
		for _, d := range list.Downloads {
			fmt.Fprintf(tw, "%d\t%s\t%s/s\t%d\t%s\n", d.Bytes, lengthOf(d.Length), dashboard.FormatBytes(d.Rate), d.Readers, d.Key)
		}
	}
	return tw.Flush()
}

// lengthOf prints a download's whole length, which the upstream may not tell.
func lengthOf(n int64) string {
	if n < 0 {
		return "?"
	}
	return strconv.FormatInt(n, 10)
}

// plural is noun for n, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}
