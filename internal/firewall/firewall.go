// Package firewall writes the packet filter rules that make sluice the
// only way out for its clients: they may reach sluice's listeners (proxy,
// transparent, DNS) and nothing else, through the gateway or on it; sluice
// itself may go out only to the ports its hosts allow and to its
// resolvers. The rules live in a table (nft) or chains (iptables) of their
// own, and never flush anyone else's, so they coexist with Docker's.
package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sluice/internal/config"
	"sluice/internal/hostport"
	"sluice/internal/route"
)

// Spec is what the rules allow.
type Spec struct {
	// Clients are the client networks; or ClientsIface, the interface
	// they come in on.
	Clients      []netip.Prefix
	ClientsIface string
	// UID, when set, is the user sluice runs as: only its traffic out is
	// restricted. Without it every process's is (a host for sluice alone).
	UID *int
	// Docker puts the iptables forward rule in DOCKER-USER, where Docker
	// leaves it alone.
	Docker bool

	// ClientTCP and ClientUDP are sluice's listener ports clients may reach.
	ClientTCP, ClientUDP []uint16
	// UpstreamTCP are the ports sluice may connect to; nil with AnyUpstream.
	UpstreamTCP []uint16
	AnyUpstream bool
	// Resolvers are the DNS servers sluice may ask; nil with AnyResolver
	// (the system's, unknown here), then any on port 53.
	Resolvers   []Resolver
	AnyResolver bool
	// Notes explain choices in the output's header.
	Notes []string
}

// Resolver is one DNS server sluice asks.
type Resolver struct {
	Addr netip.Addr // invalid: a name, any address
	Port uint16
	TLS  bool
}

// FromTable fills the ports and resolvers of s from a compiled config.
func (s *Spec) FromTable(t *route.Table) error {
	cfg, resolvers := t.Config, t.Resolvers
	for _, l := range cfg.Listen.Named() {
		if l.Addr == config.Off || l.Key == "admin" {
			continue
		}
		ap, err := netip.ParseAddrPort(l.Addr)
		if err != nil {
			return err
		}
		s.ClientTCP = append(s.ClientTCP, ap.Port())
		if l.Key == "dns" {
			s.ClientUDP = append(s.ClientUDP, ap.Port())
		}
	}
	if cfg.Policy == config.PolicyReport {
		s.AnyUpstream = true
		s.Notes = append(s.Notes, "policy: report lets any host and port through: sluice may connect to any TCP port")
	}
	for _, h := range cfg.Hosts {
		if h.Mode == config.ModeDeny {
			continue
		}
		if h.Mode == config.ModeReport {
			s.AnyUpstream = true
		}
		s.UpstreamTCP = append(s.UpstreamTCP, h.Ports...)
		if h.ConnectTo != "" {
			hp, err := hostport.Parse(h.ConnectTo, 0)
			if err != nil {
				return err
			}
			s.UpstreamTCP = append(s.UpstreamTCP, hp.Port)
		}
	}
	if t.Backend != nil {
		s.UpstreamTCP = append(s.UpstreamTCP, t.Backend.Target.Port) // the reverse listener's backend
	}
	if len(resolvers) == 0 {
		s.AnyResolver = true
		s.Notes = append(s.Notes, "no dns.resolvers: sluice uses the system's, so DNS (port 53) to any server is allowed")
	}
	for _, r := range resolvers {
		hp, err := hostport.Parse(r.Addr, 0)
		if err != nil {
			return err
		}
		res := Resolver{Port: hp.Port, TLS: r.TLS}
		if a, err := netip.ParseAddr(hp.Host); err == nil {
			res.Addr = a.Unmap()
		}
		s.Resolvers = append(s.Resolvers, res)
	}
	return nil
}

func (s *Spec) check() error {
	if len(s.Clients) == 0 && s.ClientsIface == "" {
		return errors.New("name the clients: --clients CIDR (repeatable) or --clients-iface NAME")
	}
	if len(s.ClientTCP) == 0 {
		return errors.New("the config has no listener for clients")
	}
	return nil
}

func ports(ps []uint16) string {
	ps = slices.Clone(ps)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = strconv.Itoa(int(p))
	}
	return strings.Join(out, ", ")
}

func (s *Spec) header(b *strings.Builder, comment, generatedBy string) {
	fmt.Fprintf(b, "%s sluice firewall rules, written by: %s\n", comment, generatedBy)
	fmt.Fprintf(b, "%s clients reach only sluice's listeners (tcp %s", comment, ports(s.ClientTCP))
	if len(s.ClientUDP) > 0 {
		fmt.Fprintf(b, ", udp %s", ports(s.ClientUDP))
	}
	fmt.Fprintf(b, ") and are forwarded nowhere;\n")
	if s.UID != nil {
		fmt.Fprintf(b, "%s sluice (uid %d) goes out only to its upstream ports and resolvers.\n", comment, *s.UID)
	} else {
		fmt.Fprintf(b, "%s every process of this host goes out only to sluice's upstream ports, its resolvers and NTP\n%s (udp 123, so the clock that TLS needs stays right); everything else it sends is dropped\n%s (a host for sluice alone; give --uid on a shared host).\n", comment, comment, comment)
	}
	for _, n := range s.Notes {
		fmt.Fprintf(b, "%s %s\n", comment, n)
	}
}

// NFT returns the rules as an nft script (nft -f): the table inet sluice,
// replaced whole, nothing else touched.
func NFT(s Spec, generatedBy string) (string, error) {
	if err := s.check(); err != nil {
		return "", err
	}
	var b strings.Builder
	s.header(&b, "#", generatedBy)
	b.WriteString("table inet sluice\ndelete table inet sluice\ntable inet sluice {\n")
	var v4, v6 []string
	for _, p := range s.Clients {
		if p.Addr().Is4() {
			v4 = append(v4, p.Masked().String())
		} else {
			v6 = append(v6, p.Masked().String())
		}
	}
	match := []string{}
	if len(v4) > 0 {
		fmt.Fprintf(&b, "\tset clients4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { %s }\n\t}\n", strings.Join(v4, ", "))
		match = append(match, "ip saddr @clients4")
	}
	if len(v6) > 0 {
		fmt.Fprintf(&b, "\tset clients6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { %s }\n\t}\n", strings.Join(v6, ", "))
		match = append(match, "ip6 saddr @clients6")
	}
	if s.ClientsIface != "" {
		match = append(match, fmt.Sprintf("iifname %q", s.ClientsIface))
	}
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n")
	for _, m := range match {
		fmt.Fprintf(&b, "\t\t%s jump from_clients\n", m)
	}
	b.WriteString("\t}\n\tchain from_clients {\n\t\tct state established,related accept\n")
	// Neighbour discovery, or IPv6 clients cannot find the gateway; ping, to diagnose.
	b.WriteString("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, echo-request } accept\n")
	b.WriteString("\t\ticmp type echo-request accept\n")
	fmt.Fprintf(&b, "\t\ttcp dport { %s } accept\n", ports(s.ClientTCP))
	if len(s.ClientUDP) > 0 {
		fmt.Fprintf(&b, "\t\tudp dport { %s } accept\n", ports(s.ClientUDP))
	}
	b.WriteString("\t\tcounter drop\n\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n")
	for _, m := range match {
		fmt.Fprintf(&b, "\t\t%s counter drop\n", m)
	}
	b.WriteString("\t}\n")
	b.WriteString("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\toifname \"lo\" accept\n")
	if s.UID != nil {
		fmt.Fprintf(&b, "\t\tmeta skuid %d jump sluice_out\n", *s.UID)
	} else {
		b.WriteString("\t\tjump sluice_out\n")
	}
	b.WriteString("\t}\n\tchain sluice_out {\n\t\tct state established,related accept\n")
	if s.AnyUpstream {
		b.WriteString("\t\tmeta l4proto tcp accept\n")
	} else if len(s.UpstreamTCP) > 0 {
		fmt.Fprintf(&b, "\t\ttcp dport { %s } accept\n", ports(s.UpstreamTCP))
	}
	if s.AnyResolver {
		b.WriteString("\t\tudp dport 53 accept\n\t\ttcp dport 53 accept\n")
	}
	for _, r := range s.Resolvers {
		dst := ""
		if r.Addr.IsValid() {
			fam := "ip"
			if r.Addr.Is6() {
				fam = "ip6"
			}
			dst = fmt.Sprintf("%s daddr %s ", fam, r.Addr)
		}
		if !r.TLS {
			fmt.Fprintf(&b, "\t\t%sudp dport %d accept\n", dst, r.Port)
		}
		fmt.Fprintf(&b, "\t\t%stcp dport %d accept\n", dst, r.Port)
	}
	if s.UID == nil {
		b.WriteString("\t\tudp dport 123 accept\n")
	}
	b.WriteString("\t\tcounter drop\n\t}\n}\n")
	return b.String(), nil
}

// IPTables returns the rules as a shell script of iptables commands
// (IPv4), for sh: chains of their own, created or emptied and filled
// again, jumped to from INPUT and OUTPUT, and the forward drop in FORWARD,
// or in Docker's DOCKER-USER; each jump is added only when it is not
// there, so applying the script again changes nothing.
func IPTables(s Spec, generatedBy string) (string, error) {
	if err := s.check(); err != nil {
		return "", err
	}
	for _, p := range s.Clients {
		if !p.Addr().Is4() {
			return "", fmt.Errorf("client network %s is IPv6: use --format nft, which covers both families", p)
		}
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	s.header(&b, "#", generatedBy)
	b.WriteString("# Apply with sh (as root); applying it again replaces the rules, without duplicates.\n")
	b.WriteString("set -e\n")
	b.WriteString("chain() { iptables -N \"$1\" 2>/dev/null || iptables -F \"$1\"; }\n")
	b.WriteString("hook() { iptables -C \"$@\" 2>/dev/null || iptables -I \"$@\"; }\n")
	b.WriteString("chain SLUICE-CLIENTS\nchain SLUICE-OUT\n")
	b.WriteString("iptables -A SLUICE-CLIENTS -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	b.WriteString("iptables -A SLUICE-CLIENTS -p icmp --icmp-type echo-request -j ACCEPT\n")
	fmt.Fprintf(&b, "iptables -A SLUICE-CLIENTS -p tcp -m multiport --dports %s -j ACCEPT\n", strings.ReplaceAll(ports(s.ClientTCP), " ", ""))
	if len(s.ClientUDP) > 0 {
		fmt.Fprintf(&b, "iptables -A SLUICE-CLIENTS -p udp -m multiport --dports %s -j ACCEPT\n", strings.ReplaceAll(ports(s.ClientUDP), " ", ""))
	}
	b.WriteString("iptables -A SLUICE-CLIENTS -j DROP\n")
	b.WriteString("iptables -A SLUICE-OUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	if s.AnyUpstream {
		b.WriteString("iptables -A SLUICE-OUT -p tcp -j ACCEPT\n")
	} else if len(s.UpstreamTCP) > 0 {
		fmt.Fprintf(&b, "iptables -A SLUICE-OUT -p tcp -m multiport --dports %s -j ACCEPT\n", strings.ReplaceAll(ports(s.UpstreamTCP), " ", ""))
	}
	if s.AnyResolver {
		b.WriteString("iptables -A SLUICE-OUT -p udp --dport 53 -j ACCEPT\niptables -A SLUICE-OUT -p tcp --dport 53 -j ACCEPT\n")
	}
	for _, r := range s.Resolvers {
		if r.Addr.IsValid() && !r.Addr.Is4() {
			continue // IPv6: ip6tables, not this script
		}
		dst := ""
		if r.Addr.IsValid() {
			dst = "-d " + r.Addr.String() + " "
		}
		if !r.TLS {
			fmt.Fprintf(&b, "iptables -A SLUICE-OUT %s-p udp --dport %d -j ACCEPT\n", dst, r.Port)
		}
		fmt.Fprintf(&b, "iptables -A SLUICE-OUT %s-p tcp --dport %d -j ACCEPT\n", dst, r.Port)
	}
	if s.UID == nil {
		b.WriteString("iptables -A SLUICE-OUT -p udp --dport 123 -j ACCEPT\n")
	}
	b.WriteString("iptables -A SLUICE-OUT -j DROP\n")
	forward := "FORWARD"
	if s.Docker {
		forward = "DOCKER-USER"
	}
	var from []string
	for _, p := range s.Clients {
		from = append(from, "-s "+p.Masked().String())
	}
	if s.ClientsIface != "" {
		from = append(from, "-i "+s.ClientsIface)
	}
	for _, f := range from {
		fmt.Fprintf(&b, "hook INPUT %s -j SLUICE-CLIENTS\n", f)
		fmt.Fprintf(&b, "hook %s %s -j DROP\n", forward, f)
	}
	owner := ""
	if s.UID != nil {
		owner = fmt.Sprintf("-m owner --uid-owner %d ", *s.UID)
	}
	fmt.Fprintf(&b, "hook OUTPUT ! -o lo %s-j SLUICE-OUT\n", owner)
	return b.String(), nil
}
