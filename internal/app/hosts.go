package app

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"sluice/internal/config"
	"sluice/internal/policy"
)

// hostsSuggestCmd turns the lines report mode logged into a hosts section:
// one entry per host it let through, with the profile the embedded default
// gives it, plain_http and ports where the traffic needed them.
func hostsSuggestCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, _ := flags("hosts suggest", stdout, stderr)
	if done, err := parseFlags(fs, args); done {
		return err
	}
	var s suggestion
	files := fs.Args()
	if len(files) == 0 {
		files = []string{"-"}
	}
	for _, name := range files {
		if err := s.readLog(name, stdin); err != nil {
			return err
		}
	}
	if s.lines == 0 {
		return fmt.Errorf("no report lines (msg %q) in %s: run sluice with policy: report (or an entry's mode: report) first, then give its log", policy.ReportMsg, strings.Join(files, ", "))
	}
	s.write(stdout)
	return nil
}

// suggestion gathers what report mode let through.
type suggestion struct {
	lines int
	hosts map[string]*suggestedHost // a host to add, by name
	fixes map[string]string         // a listed host's target and reason -> the fix
}

type suggestedHost struct {
	ports     map[uint16]bool
	plainHTTP bool
}

// reportLine is what suggest reads of a report line; a line may carry a
// prefix (journalctl's), so it is read from its first "{".
type reportLine struct {
	Msg    string `json:"msg"`
	Host   string `json:"host"`
	Port   uint16 `json:"port"`
	Scheme string `json:"scheme"`
	Reason string `json:"reason"`
	Fix    string `json:"fix"`
}

func (s *suggestion) readLog(name string, stdin io.Reader) error {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		i := bytes.IndexByte(line, '{')
		if i < 0 {
			continue
		}
		var l reportLine
		if json.Unmarshal(line[i:], &l) != nil || l.Msg != policy.ReportMsg || l.Host == "" {
			continue
		}
		s.add(l)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (s *suggestion) add(l reportLine) {
	s.lines++
	switch l.Reason {
	case "host not listed", "host in report mode":
		if s.hosts == nil {
			s.hosts = map[string]*suggestedHost{}
		}
		h := s.hosts[l.Host]
		if h == nil {
			h = &suggestedHost{ports: map[uint16]bool{}}
			s.hosts[l.Host] = h
		}
		h.ports[l.Port] = true
		h.plainHTTP = h.plainHTTP || l.Scheme == "http"
	default: // the host is listed; its entry needs a change the log names
		if s.fixes == nil {
			s.fixes = map[string]string{}
		}
		s.fixes[fmt.Sprintf("%s (%s)", net.JoinHostPort(l.Host, strconv.Itoa(int(l.Port))), l.Reason)] = l.Fix
	}
}

func (s *suggestion) write(w io.Writer) {
	fmt.Fprintf(w, "# sluice hosts suggest: %d hosts from %d report lines. Entries are intercepted (the\n", len(s.hosts), s.lines)
	fmt.Fprintln(w, "# default), so clients must trust sluice's CA (sluice env); mode: tunnel for any that must not be.")
	if len(s.hosts) > 0 {
		fmt.Fprintln(w, "hosts:")
	}
	for _, name := range slices.Sorted(maps.Keys(s.hosts)) {
		fmt.Fprintf(w, "  %s: {%s}\n", strconv.Quote(name), strings.Join(s.hosts[name].fields(name), ", "))
	}
	if len(s.fixes) > 0 {
		fmt.Fprintln(w, "# already listed, but refused by enforce mode:")
		for _, k := range slices.Sorted(maps.Keys(s.fixes)) {
			fmt.Fprintf(w, "#   %s: %s\n", k, s.fixes[k])
		}
	}
}

// fields are the settings of a suggested entry: its profile, plain_http,
// and its ports when the defaults (443, and 80 with plain_http) miss one.
func (h *suggestedHost) fields(name string) []string {
	var out []string
	if p := config.DefaultProfile(name); p != "" {
		out = append(out, "profile: "+p)
	}
	if h.plainHTTP {
		out = append(out, "plain_http: true")
	}
	ports := slices.SortedFunc(maps.Keys(h.ports), cmp.Compare[uint16])
	defaults := func(p uint16) bool { return p == 443 || p == 80 && h.plainHTTP }
	if slices.ContainsFunc(ports, func(p uint16) bool { return !defaults(p) }) {
		list := make([]string, len(ports))
		for i, p := range ports {
			list[i] = strconv.Itoa(int(p))
		}
		out = append(out, "ports: ["+strings.Join(list, ", ")+"]")
	}
	return out
}
