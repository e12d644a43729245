package config

import (
	"reflect"
	"slices"
	"testing"
)

// TestEveryFieldReloadClassified: every key of the config file says what
// a reload does with it (reload:"live" or "restart"), itself or through
// the section it is in; a new key without it fails here, so the list of
// restart-only keys cannot fall behind the config.
func TestEveryFieldReloadClassified(t *testing.T) {
	var unclassified []string
	var walk func(typ reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			switch f.Tag.Get("reload") {
			case reloadLive, reloadRestart:
				continue
			case "":
			default:
				t.Errorf("%s%s: reload tag %q, want live or restart", prefix, name, f.Tag.Get("reload"))
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() != reflect.Struct {
				unclassified = append(unclassified, prefix+name)
				continue
			}
			walk(ft, prefix+name+".")
		}
	}
	walk(reflect.TypeFor[Config](), "")
	if len(unclassified) > 0 {
		t.Errorf("config keys with no reload tag (live or restart) on them or their section: %v", unclassified)
	}
}

// TestRestartOnly: the restart-only keys a config differs in from what
// runs, by key path; live keys are never named.
func TestRestartOnly(t *testing.T) {
	parse := func(doc string) *Config {
		t.Helper()
		c, err := Parse([]byte(doc), "c.yaml", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	running := parse("hosts: {a.test: {}}\n")
	for _, tt := range []struct {
		name, doc string
		want      []string
	}{
		{"nothing", "hosts: {a.test: {}}\n", nil},
		{"live only", "hosts: {b.test: {}}\nlog: {level: debug, queries: true}\ntimeouts: {dial: 3s, tls_handshake: 4s, body: 1m}\nlimits: {connections_per_client: 9}\n", nil},
		{"log format", "hosts: {}\nlog: {format: text}\n", []string{"log.format"}},
		{"listeners", "hosts: {}\nlisten: {proxy: 127.0.0.1:3129, dns: 127.0.0.1:5353}\ndns: {answer: [127.0.0.1]}\n", []string{"listen.proxy", "listen.dns", "dns.pin"}},
		{"a reverse listener added", "hosts: {}\nlisten: {reverse: {addr: 127.0.0.1:8080, backend: http://127.0.0.1:9}}\n", []string{"listen.reverse"}},
		{"server timeouts", "hosts: {}\ntimeouts: {client_idle: 1m, request_header: 5s, shutdown: 1s}\n", []string{"timeouts.request_header", "timeouts.client_idle", "timeouts.shutdown"}},
		{"stores", "hosts: {}\ncache: {max_bytes: 64MiB}\nblobs: {max_bytes: 1GiB}\nbans: {ipv6_prefix: 56}\n", []string{"cache.max_bytes", "blobs.max_bytes", "bans.ipv6_prefix"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := RestartOnly(running, parse(tt.doc)); !slices.Equal(got, tt.want) {
				t.Errorf("RestartOnly(running, %q) = %v, want %v", tt.doc, got, tt.want)
			}
		})
	}
}
