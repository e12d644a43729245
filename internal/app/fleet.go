package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"sluice/internal/fleet"
)

func fleetCmd(args []string, stdout, stderr io.Writer) error {
	fs, _ := flags("fleet", stdout, stderr)
	base := fs.String("base", "", "the freqtrade `CONFIG.json` every bot starts from (strict JSON)")
	strategies := fs.String("strategies", "", "a `DIR` of strategy files: one bot each")
	split := fs.Int("split", 0, "`N` bots, each with every Nth pair of the base's exchange.pair_whitelist")
	out := fs.StringP("output", "o", "user_data/fleet", "the `DIR` to write the configs and compose.fleet.yaml to")
	o := fleet.Options{}
	fs.StringVar(&o.Proxy, "proxy", "http://172.30.0.2:3128", "sluice's proxy URL, as the bots reach it")
	fs.StringVar(&o.CAFile, "ca", "/sluice/ca-bundle.pem", "the CA bundle's path inside the bots' containers")
	fs.StringVar(&o.DNS, "dns", "172.30.0.2", "sluice's DNS server, as the bots reach it")
	fs.StringVar(&o.Image, "image", "freqtradeorg/freqtrade:stable", "the bots' image")
	fs.StringVar(&o.ContainerDir, "container-dir", "/freqtrade/user_data/fleet", "where the -o directory is mounted inside the bots' containers")
	if done, err := parse(fs, args); done {
		return err
	}
	if *base == "" {
		return errors.New("--base is required: the freqtrade config every bot starts from")
	}
	data, err := os.ReadFile(*base)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, &o.Base); err != nil {
		return fmt.Errorf("%s: %w (sluice fleet reads strict JSON: remove comments and trailing commas)", *base, err)
	}
	if *strategies != "" {
		if o.Strategies, err = fleet.FindStrategies(*strategies); err != nil {
			return err
		}
	}
	o.Split = *split
	bots, err := fleet.Bots(o)
	if err != nil {
		return err
	}
	written, removed, err := fleet.Write(*out, o, bots)
	if err != nil {
		return err
	}
	for _, f := range written {
		fmt.Fprintln(stdout, f)
	}
	for _, f := range removed {
		fmt.Fprintf(stdout, "removed %s: no such bot any more (its trade database stays)\n", f)
	}
	for _, w := range fleet.Warnings(o, bots) {
		fmt.Fprintln(stderr, "warning:", w)
	}
	return nil
}
