package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"sluice/internal/config"
)

// blobsCmd lists or removes blob store entries through the running
// sluice's admin listener: sluice blobs ls | rm ID | rm --all | gc.
func blobsCmd(args []string, stdout, stderr io.Writer) error {
	const synopsis = "blobs [-c FILE] ls | rm KEY_OR_DIGEST | rm --all | gc"
	fs, cfgPath := flags("blobs", synopsis, stdout, stderr)
	all := fs.Bool("all", false, "with rm: remove every entry")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return errors.New("usage: sluice " + synopsis)
	}
	// flags may also follow the verb: sluice blobs rm --all
	if err := fs.Parse(rest[1:]); err != nil {
		return err
	}
	verb, operands := rest[0], fs.Args()
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if cfg.Listen.Admin == config.Off {
		return errors.New("listen.admin is off: the blob commands talk to the running sluice through it")
	}
	base := "http://" + clientAddr(cfg.Listen.Admin) + "/v1/blobs"
	var req *http.Request
	switch {
	case verb == "ls" && len(operands) == 0:
		req, _ = http.NewRequest(http.MethodGet, base, nil)
	case verb == "rm" && *all && len(operands) == 0:
		req, _ = http.NewRequest(http.MethodDelete, base+"?all=1", nil)
	case verb == "rm" && !*all && len(operands) == 1:
		req, _ = http.NewRequest(http.MethodDelete, base+"?id="+url.QueryEscape(operands[0]), nil)
	case verb == "gc" && len(operands) == 0:
		req, _ = http.NewRequest(http.MethodPost, base+"/gc", nil)
	default:
		return errors.New("usage: sluice " + synopsis)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}} // never via a proxy from the environment
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w (is sluice running?)", cfg.Listen.Admin, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin listener: %s: %s", resp.Status, body)
	}
	if verb != "ls" {
		_, err = stdout.Write(body)
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
	return tw.Flush()
}
