// Package config is sluice's configuration as plain data: the typed
// structs, the embedded default (default.yaml) and API profiles
// (profiles/*.yaml), strict YAML decoding over the defaults, and the
// structural checks, every problem reported with its key path and line.
// Strings that need parsing (regexps, CIDRs, URLs, PEM files, key pairs,
// host patterns) are parsed once, by internal/route's compile step, whose
// errors Config.Locate places in the file the same way.
package config
