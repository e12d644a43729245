package config

import (
	"embed"
	"path"
	"slices"
	"strings"
)

// Profiles are embedded YAML files, one per API (profiles/NAME.yaml), that
// carry what sluice knows about that API. A host entry names one with
// `profile: NAME`. Today a profile documents the API's hosts; the cache,
// throttle and filter rules of later capabilities are added to the same files.
//
//go:embed profiles/*.yaml
var profileFS embed.FS

// ProfileNames lists the embedded profiles, sorted.
func ProfileNames() []string {
	entries, _ := profileFS.ReadDir("profiles") // embedded: cannot fail
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), path.Ext(e.Name())))
	}
	slices.Sort(names)
	return names
}
