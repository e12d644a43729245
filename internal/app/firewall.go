package app

import (
	"fmt"
	"io"
	"strings"

	"sluice/internal/config"
	"sluice/internal/firewall"
)

func firewallCmd(args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := flags("firewall", stdout, stderr)
	format := fs.String("format", "nft", "nft (a table of its own, for nft -f) or iptables (a shell script of iptables commands, for sh; IPv4; applying it again changes nothing)")
	clients := fs.StringArray("clients", nil, "a client network, CIDR (repeatable)")
	iface := fs.String("clients-iface", "", "the interface clients come in on, instead of or with --clients")
	uid := fs.Int("uid", -1, "the user sluice runs as: only its traffic out is restricted (default: every process's)")
	docker := fs.Bool("docker", false, "iptables: put the forward rule in DOCKER-USER")
	if done, err := parse(fs, args); done {
		return err
	}
	t, err := loadTable(*cfgPath, nil)
	if err != nil {
		return err
	}
	spec := firewall.Spec{ClientsIface: *iface, Docker: *docker}
	for _, c := range *clients {
		p, err := config.ParsePrefix(c)
		if err != nil {
			return fmt.Errorf("--clients %q: want a network like 172.30.0.0/24 or an address", c)
		}
		spec.Clients = append(spec.Clients, p)
	}
	if *uid >= 0 {
		spec.UID = uid
	}
	if err := spec.FromTable(t); err != nil {
		return err
	}
	by := "sluice firewall " + strings.Join(args, " ")
	var rules string
	switch *format {
	case "nft":
		rules, err = firewall.NFT(spec, by)
	case "iptables":
		rules, err = firewall.IPTables(spec, by)
	default:
		return fmt.Errorf("--format %q: want nft or iptables", *format)
	}
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, rules)
	return err
}
