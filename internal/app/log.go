package app

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// logCmd prints the running sluice's access lines: the last ones it kept,
// and with --follow the new ones as they happen, like varnishlog.
func logCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("log", stdout, stderr)
	follow := fs.BoolP("follow", "f", false, "keep printing the lines as requests end, until interrupted")
	refused := fs.Bool("refused", false, "only requests that sluice refused or that failed (status 400 and up, or a stage that refused)")
	host := fs.String("host", "", "only requests to `HOST` (its name, with or without the port)")
	asJSON := fs.Bool("json", false, "print the access lines as sluice writes them (JSON)")
	if done, err := parse(fs, args); done {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	path := "/v1/log"
	if *follow {
		path += "?follow=1"
	}
	resp, err := adminRequest(cfg, 0, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l accessLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("an access line that is not JSON: %w: %q", err, sc.Text())
		}
		if !l.matches(*refused, *host) {
			continue
		}
		if *asJSON {
			fmt.Fprintln(stdout, sc.Text())
		} else {
			fmt.Fprintln(stdout, l.String())
		}
	}
	return sc.Err()
}

// accessLine is what sluice log reads of an access line.
type accessLine struct {
	Time      time.Time `json:"time"`
	Msg       string    `json:"msg"`
	ClientIP  string    `json:"client_ip"`
	Client    string    `json:"client"`
	Method    string    `json:"method"`
	Host      string    `json:"host"`
	Path      string    `json:"path"`
	Status    int       `json:"status"`
	Cache     string    `json:"cache"`
	Duration  float64   `json:"duration"`
	RefusedBy string    `json:"refused_by"`
	Reason    string    `json:"reason"`
	Error     string    `json:"error"`
}

func (l *accessLine) matches(refused bool, host string) bool {
	if l.Msg != "request" {
		return true // sluice's own notes (lines dropped) always show
	}
	if refused && l.RefusedBy == "" && l.Status < 400 {
		return false
	}
	if host != "" {
		name := l.Host
		if i := strings.LastIndexByte(name, ':'); i > 0 && !strings.Contains(host, ":") {
			name = name[:i]
		}
		if !strings.EqualFold(name, host) {
			return false
		}
	}
	return true
}

// String is the line for people: time, client, request, status, cache,
// duration, and why it was refused or failed.
func (l *accessLine) String() string {
	if l.Msg != "request" {
		return l.Msg
	}
	who := l.ClientIP
	if l.Client != "" {
		who += " " + l.Client
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s%s %d", l.Time.Local().Format("15:04:05.000"), who, l.Method, l.Host, l.Path, l.Status)
	if l.Cache != "" {
		b.WriteString(" " + l.Cache)
	}
	fmt.Fprintf(&b, " %s", time.Duration(l.Duration*float64(time.Second)).Round(100*time.Microsecond))
	if l.RefusedBy != "" {
		fmt.Fprintf(&b, " refused by %s: %s", l.RefusedBy, l.Reason)
	} else if l.Error != "" {
		fmt.Fprintf(&b, " %s: %s", l.Reason, l.Error)
	}
	return b.String()
}
