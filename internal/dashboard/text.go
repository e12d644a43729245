package dashboard

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// listed is how many rows of each list one screen shows.
const listed = 5

// WriteText writes st as one terminal screen (sluice status).
func (st Status) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "sluice %s  %s  up %s  at %s\n", st.Instance, st.Version,
		(time.Duration(st.Uptime) * time.Second).String(), st.Time.Local().Format(time.DateTime))
	n := st.Now
	fmt.Fprintf(&b, "requests/s %s   hit %s  miss %s  stale %s  refused %s  over budget %s\n",
		num(n.Requests), num(n.Hit), num(n.Miss), num(n.Stale), num(n.Refused), num(n.OverBudget))
	t := st.Totals
	fmt.Fprintf(&b, "hit ratio %.1f%% now, %.1f%% since start   upstream calls saved %s   requests %s, refused %s, over budget %s\n",
		n.HitRatio*100, t.HitRatio*100, num(t.Saved), num(t.Requests), num(t.Refused), num(t.OverBudget))
	fmt.Fprintf(&b, "cache %s in %s entries", FormatBytes(st.Cache.Bytes), num(st.Cache.Entries))
	if st.Blobs != nil {
		fmt.Fprintf(&b, "   blobs %s in %d files", FormatBytes(float64(st.Blobs.Bytes)), st.Blobs.Files)
	}
	b.WriteByte('\n')
	if line, peak := spark(st.History, 60); line != "" {
		fmt.Fprintf(&b, "last %d s  %s  requests/s, peak %s\n", len([]rune(line)), line, num(peak))
	}
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	section := func(title, header string, rows int, row func(i int) string) {
		fmt.Fprintf(tw, "\n%s\n", title)
		if rows == 0 {
			fmt.Fprintln(tw, "  none")
			return
		}
		fmt.Fprintln(tw, header)
		for i := range min(rows, listed) {
			fmt.Fprintln(tw, row(i))
		}
		if rows > listed {
			fmt.Fprintf(tw, "  and %d more\n", rows-listed)
		}
	}
	section("BUDGETS", "  BUDGET\tKEY\tLEVEL\tAVAILABLE\tQUEUED\tPAUSED UNTIL", len(st.Budgets), func(i int) string {
		l := st.Budgets[i]
		paused := ""
		if !l.Paused.IsZero() {
			paused = l.Paused.Local().Format(time.TimeOnly)
		}
		return fmt.Sprintf("  %s\t%s\t%s\t%s of %s\t%d\t%s", l.Budget, l.Key, gauge(l.Available, l.Capacity), num(l.Available), num(l.Capacity), l.Queued, paused)
	})
	section("LAST REFUSALS", "  TIME\tCLIENT\tHOST\tREQUEST\tSTAGE\tREASON", len(st.Refusals), func(i int) string {
		x := st.Refusals[i]
		reason := x.Reason
		if x.RuleSet != "" {
			reason += " (" + x.RuleSet + ": " + x.Check + ")"
		}
		client := x.ClientIP
		if x.Name != "" {
			client += " (" + x.Name + ")"
		}
		return fmt.Sprintf("  %s\t%s\t%s\t%s %s\t%s\t%s", x.Time.Local().Format(time.TimeOnly), client, x.Host, x.Method, x.Path, x.Stage, reason)
	})
	section("BANS", "  CLIENT\tUNTIL\tREASON", max(st.BansTotal, len(st.Bans)), func(i int) string {
		x := st.Bans[i]
		return fmt.Sprintf("  %s\t%s\t%s", x.Client, x.Until.Local().Format(time.DateTime), x.Reason)
	})
	if st.Blobs != nil {
		section("BLOB DOWNLOADS", "  RECEIVED\tOF\tRATE\tREADERS\tURL", len(st.Blobs.Downloads), func(i int) string {
			d := st.Blobs.Downloads[i]
			of := "?"
			if d.Length >= 0 {
				of = FormatBytes(float64(d.Length))
			}
			return fmt.Sprintf("  %s\t%s\t%s/s\t%d\t%s", FormatBytes(float64(d.Bytes)), of, FormatBytes(d.Rate), d.Readers, d.Key)
		})
	}
	if st.Pins != nil {
		section("DNS PINS", "  HOST\tPINNED\tDISAGREEING", len(st.Pins), func(i int) string {
			p := st.Pins[i]
			return fmt.Sprintf("  %s\t%s\t%s", p.Host, joinAddrs(p.Addrs), joinAddrs(p.Disagreeing))
		})
	}
	if len(st.Halts) > 0 {
		section("TRADING HALTED", "  SCOPE	MODE	UNTIL	REASON", len(st.Halts), func(i int) string {
			h := st.Halts[i]
			until := "sluice resume"
			if !h.Until.IsZero() {
				until = h.Until.Local().Format(time.DateTime)
			}
			return fmt.Sprintf("  %s	%s	%s	%s", h.Scope, h.Mode, until, h.Reason)
		})
	}
	if len(st.TradeLimits) > 0 {
		section("TRADE LIMITS", "  SCOPE	LIMIT	USED", len(st.TradeLimits), func(i int) string {
			u := st.TradeLimits[i]
			return fmt.Sprintf("  %s	%s	%g of %g (%.0f%%)", u.Scope, u.Limit, u.Used, u.Max, 100*u.Used/u.Max)
		})
	}
	if len(st.Streams) > 0 {
		section("MARKET STREAMS", "  HOST\tUPSTREAM CONNECTIONS\tCLIENTS\tSTREAMS", len(st.Streams), func(i int) string {
			h := st.Streams[i]
			return fmt.Sprintf("  %s\t%d\t%d\t%d", h.Host, h.Connections, h.Clients, len(h.Streams))
		})
		var rows []string
		for _, h := range st.Streams {
			for _, s := range h.Streams {
				rows = append(rows, fmt.Sprintf("  %s\t%s\t%d\t%d", s.Name, h.Host, s.Clients, s.Conn))
			}
		}
		section("STREAMS (most clients first)", "  STREAM\tHOST\tCLIENTS\tUPSTREAM CONNECTION", len(rows), func(i int) string { return rows[i] })
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func joinAddrs[T fmt.Stringer](as []T) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// spark draws the requests of the last n points as block characters.
func spark(h []Point, n int) (string, float64) {
	h = h[max(len(h)-n, 0):]
	peak := 0.0
	for _, p := range h {
		peak = max(peak, p.Requests)
	}
	if len(h) == 0 {
		return "", 0
	}
	blocks := []rune(" ▁▂▃▄▅▆▇█")
	var b strings.Builder
	for _, p := range h {
		i := 0
		if peak > 0 {
			i = int(p.Requests / peak * float64(len(blocks)-1))
		}
		b.WriteRune(blocks[i])
	}
	return b.String(), peak
}

// gauge draws how full a budget is: # for what is available.
func gauge(avail, capacity float64) string {
	const width = 16
	full := 0
	if capacity > 0 {
		full = int(min(max(avail/capacity, 0), 1)*width + 0.5)
	}
	return "[" + strings.Repeat("#", full) + strings.Repeat("-", width-full) + "]"
}

func num(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v == float64(int64(v)) || v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// FormatBytes prints a byte count in binary units, as people read sizes.
func FormatBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}
