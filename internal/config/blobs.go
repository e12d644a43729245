package config

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// BlobsConfig is the top-level `blobs` section: the on-disk store of
// immutable files (container layers, packages, archives).
type BlobsConfig struct {
	// MaxBytes caps the store on disk; the least recently used files go
	// first. Default 10GiB.
	MaxBytes ByteSize `yaml:"max_bytes" reload:"restart"`
	// Patterns are regexps on the request path of immutable files, on every
	// host. Default: OCI/Docker registry blobs, .deb/.udeb/.rpm/.apk
	// packages and common archives.
	Patterns []string `yaml:"patterns,omitempty" reload:"live"`
	// WhenClientsLeave is finish (the default: the download completes for
	// later requests) or abort (stop when no client is reading any more).
	WhenClientsLeave string `yaml:"when_clients_leave" reload:"restart"`
	// ScrubEvery, when set, hashes every stored file again that often and
	// drops the ones whose content no longer matches. Default off: a file
	// whose size or modification time changed is hashed before it is
	// served in any case.
	ScrubEvery Duration `yaml:"scrub_every,omitempty" reload:"restart"`
}

// DefaultBlobPatterns match files that never change once published.
var DefaultBlobPatterns = []string{
	`^/v2/.+/blobs/sha256:[0-9a-f]{64}$`,
	`\.(deb|udeb|rpm|apk)$`,
	`\.(tar|tgz|tar\.gz|txz|tar\.xz|tar\.zst|zst|zip|7z|bz2|tar\.bz2)$`,
}

// HostBlobs is a host entry's `blobs`: "off", or extra patterns.
type HostBlobs struct {
	Off bool `yaml:"-"`
	// Patterns add to blobs.patterns for this host.
	Patterns []string `yaml:"patterns,omitempty"`
	// WithCredentials stores matches that carry credentials (for files
	// that are the same for everyone); digest-named blobs always may be.
	WithCredentials bool `yaml:"with_credentials,omitempty"`
}

// UnmarshalYAML accepts "off" or the mapping.
func (hb *HostBlobs) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value != "off" {
			return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: blobs %q: want off or a mapping", n.Line, n.Value)}}
		}
		hb.Off = true
		return nil
	}
	type plain HostBlobs
	return strictDecode(n, (*plain)(hb))
}

// MarshalYAML writes "off" or the mapping.
func (hb HostBlobs) MarshalYAML() (any, error) {
	if hb.Off {
		return "off", nil
	}
	type plain HostBlobs
	return plain(hb), nil
}
