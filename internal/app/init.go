package app

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"

	"sluice/internal/config"
	"sluice/internal/route"
)

// initCmd writes a commented starter config: the embedded default's hosts,
// or those of an old stack's api-list, and with --transparent the
// listeners that DNS-steered clients need.
func initCmd(args []string, stdout, stderr io.Writer) error {
	fs, _ := flags("init", stdout, stderr)
	apiList := fs.String("from-api-list", "", "read the hosts from the old stack's api-list `FILE` (one host a line; # comments, CRLF and upper case are fine)")
	transparent := fs.Bool("transparent", false, "add the DNS and transparent listeners for clients that cannot use a proxy, and the firewall line to run")
	address := fs.String("address", "", "with --transparent: the `IP` at which clients reach this machine (default: its first non-loopback IPv4 address)")
	outPath := fs.StringP("output", "o", "", "write to `FILE` (refused if it exists) instead of standard output")
	if done, err := parse(fs, args); done {
		return err
	}
	hosts := defaultHosts()
	source := "the hosts of the embedded default"
	if *apiList != "" {
		var err error
		if hosts, err = readAPIList(*apiList); err != nil {
			return err
		}
		source = "the hosts of " + *apiList
		reportProfiles(stderr, *apiList, hosts)
	}
	var cn *clientNet
	if *transparent {
		var err error
		if cn, err = findClientNet(*address); err != nil {
			return err
		}
	}
	text := starterConfig(hosts, source, cn, *outPath)
	if _, err := route.Parse([]byte(text), "sluice init's output", ".", nil); err != nil {
		return fmt.Errorf("the starter config does not validate (a bug in sluice init): %w", err)
	}
	if *outPath == "" {
		_, err := io.WriteString(stdout, text)
		return err
	}
	f, err := os.OpenFile(*outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s exists: sluice init does not overwrite a config (remove it, or pick another -o)", *outPath)
		}
		return err
	}
	if _, err := io.WriteString(f, text); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s; check it with: sluice check -c %s\n", *outPath, *outPath)
	return nil
}

// starterHost is a host of the starter config and the ports it needs.
type starterHost struct {
	name    string
	profile string
	ports   []uint16 // nil: the default, 443
}

// defaultHosts are the embedded default's entries.
func defaultHosts() []starterHost {
	var out []starterHost
	for _, e := range config.DefaultEntries() {
		out = append(out, starterHost{name: e.Pattern, profile: e.Profile, ports: e.Ports})
	}
	return out
}

// readAPIList reads an old stack's api-list as hosts_file reads it
// (config.ParseHostList), each host with the profile the embedded default
// gives it.
func readAPIList(path string) ([]starterHost, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	names, err := config.ParseHostList(data, path)
	if err != nil {
		return nil, err
	}
	var hosts []starterHost
	for _, name := range names {
		hosts = append(hosts, starterHost{name: name, profile: config.DefaultProfile(name)})
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%s lists no host", path)
	}
	return hosts, nil
}

// reportProfiles says which hosts of the list got a profile and which did
// not (those are allowed and cached only as HTTP allows, with no budget).
func reportProfiles(w io.Writer, path string, hosts []starterHost) {
	var with, without []string
	for _, h := range hosts {
		if h.profile != "" {
			with = append(with, h.name+" ("+h.profile+")")
		} else {
			without = append(without, h.name)
		}
	}
	fmt.Fprintf(w, "%s: %d hosts; %d with a profile (its cache rules, budget and guards)", path, len(hosts), len(with))
	if len(with) > 0 {
		fmt.Fprintf(w, ": %s", strings.Join(with, ", "))
	}
	fmt.Fprintf(w, "\n%d without one (allowed; cached only as their answers' headers allow; no budget)", len(without))
	if len(without) > 0 {
		fmt.Fprintf(w, ": %s", strings.Join(without, ", "))
	}
	fmt.Fprintln(w)
}

// clientNet is where DNS-steered clients reach sluice.
type clientNet struct {
	ip   net.IP
	cidr string // the clients' network, for the firewall line ("" when unknown)
}

// findClientNet takes the address given, or the machine's first
// non-loopback IPv4 address, and the network of the interface that has it.
func findClientNet(given string) (*clientNet, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil && given == "" {
		return nil, fmt.Errorf("finding this machine's address: %w (give it with --address)", err)
	}
	var want net.IP
	if given != "" {
		if want = net.ParseIP(given); want == nil {
			return nil, fmt.Errorf("--address %q is not an IP address", given)
		}
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		if want == nil && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
			want = ipn.IP
		}
		if want != nil && ipn.IP.Equal(want) {
			network := &net.IPNet{IP: ipn.IP.Mask(ipn.Mask), Mask: ipn.Mask}
			return &clientNet{ip: want, cidr: network.String()}, nil
		}
	}
	if want == nil {
		return nil, errors.New("this machine has no non-loopback IPv4 address: give the one clients reach it at with --address")
	}
	return &clientNet{ip: want}, nil
}

// starterConfig is the text of the starter config.
func starterConfig(hosts []starterHost, source string, cn *clientNet, outPath string) string {
	cfgArg := "sluice.yaml"
	if outPath != "" {
		cfgArg = outPath
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# sluice starter config, written by sluice init from %s.
# Check it:  sluice check -c %s
# Run it:    sluice run -c %s
# Every key is described in docs/reference/configuration.md.
listen:
  proxy: 127.0.0.1:3128       # clients: HTTPS_PROXY=http://127.0.0.1:3128 (sluice env prints every variable)
  admin: 127.0.0.1:9090       # the dashboard, /healthz, /metrics, /ca.pem
`, source, cfgArg, cfgArg)
	if cn != nil {
		at := func(port string) string { return net.JoinHostPort(cn.ip.String(), port) }
		tlsAddrs := []string{at("443")}
		if slices.ContainsFunc(hosts, func(h starterHost) bool { return slices.Contains(h.ports, 9443) }) {
			tlsAddrs = append(tlsAddrs, at("9443"))
		}
		fmt.Fprintf(&b, `  # Clients that cannot use a proxy: sluice's DNS answers every allowed name
  # with %s, and these listeners take what the clients then send (ports
  # under 1024 need root or CAP_NET_BIND_SERVICE).
  dns: "%s"
  transparent_tls: ["%s"]
  transparent_http: "%s"
dns:
  answer: [%s]      # where clients reach this machine
  refuse: refused             # every other name: REFUSED
`, cn.ip, at("53"), strings.Join(tlsAddrs, `", "`), at("80"), cn.ip)
	}
	b.WriteString(`# data_dir: /var/lib/sluice  # the CA, admin token, blobs and bans; default $XDG_DATA_HOME/sluice,
                              # else ~/.local/share/sluice (the CA your clients already trust stays)
policy: enforce               # report: let everything through and log what it would refuse
hosts:
  # Every host a client may reach; sluice refuses any other. A profile brings
  # that API's cache rules, request budget and guards (withdrawals refused).
`)
	width := 0
	for _, h := range hosts {
		width = max(width, len(quoteHost(h.name)))
	}
	for _, h := range hosts {
		var fields []string
		if h.profile != "" {
			fields = append(fields, "profile: "+h.profile)
		}
		if len(h.ports) > 0 {
			ps := make([]string, len(h.ports))
			for i, p := range h.ports {
				ps[i] = fmt.Sprint(p)
			}
			fields = append(fields, "ports: ["+strings.Join(ps, ", ")+"]")
		}
		line := fmt.Sprintf("  %-*s {%s}", width+1, quoteHost(h.name)+":", strings.Join(fields, ", "))
		if h.profile == "" {
			line += "   # no profile: cached only as its answers allow, no budget"
		}
		b.WriteString(line + "\n")
	}
	if cn != nil {
		cidr := cn.cidr
		if cidr == "" {
			cidr = "CLIENT_NETWORK/PREFIX"
		}
		fmt.Fprintf(&b, `# Leave the clients no way out but sluice (run as root on this machine):
#   sluice firewall -c %s --clients %s | nft -f -
# Then point the clients' DNS at %s, and make them trust sluice's CA:
#   sluice ca trust   (on each client; or sluice ca export for a file)
`, cfgArg, cidr, cn.ip)
	}
	return b.String()
}

// quoteHost quotes a pattern that YAML would not take bare ("*.x").
func quoteHost(name string) string {
	if strings.HasPrefix(name, "*") {
		return `"` + name + `"`
	}
	return name
}
