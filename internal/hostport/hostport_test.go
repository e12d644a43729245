package hostport

import (
	"net/netip"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		def      uint16
		want     HostPort
		wantErr  bool
	}{
		{"host only", "api.binance.com", 443, HostPort{"api.binance.com", 443}, false},
		{"host and port", "api.binance.com:8443", 443, HostPort{"api.binance.com", 8443}, false},
		{"case and trailing dot", "API.Binance.COM.:443", 443, HostPort{"api.binance.com", 443}, false},
		{"IDNA", "bücher.example", 443, HostPort{"xn--bcher-kva.example", 443}, false},
		{"IPv4", "127.0.0.1:80", 0, HostPort{"127.0.0.1", 80}, false},
		{"IPv6 bracketed", "[::1]:8443", 0, HostPort{"::1", 8443}, false},
		{"IPv6 no port", "[2001:db8::1]", 443, HostPort{"2001:db8::1", 443}, false},
		{"IPv4-mapped IPv6 unmapped", "[::ffff:169.254.169.254]:80", 0, HostPort{"169.254.169.254", 80}, false},
		{"port required", "api.binance.com", 0, HostPort{}, true},
		{"port zero", "a.test:0", 443, HostPort{}, true},
		{"port too big", "a.test:65536", 443, HostPort{}, true},
		{"empty host", ":443", 443, HostPort{}, true},
		{"short IPv4", "127.1:80", 0, HostPort{}, true},
		{"hex IPv4", "0x7f.0.0.1:80", 0, HostPort{}, true},
		{"decimal IPv4", "2130706433:80", 0, HostPort{}, true},
		{"zone", "[fe80::1%25eth0]:80", 0, HostPort{}, true},
		{"space", "a b.test", 443, HostPort{}, true},
		{"slash", "a.test/x", 443, HostPort{}, true},
		{"userinfo", "user@a.test", 443, HostPort{}, true},
		{"unclosed bracket", "[::1:80", 0, HostPort{}, true},
		{"invalid UTF-8 (fuzz)", "\xc30", 443, HostPort{}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in, tt.def)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("Parse(%q, %d) = %v, %v; want %v, error %v", tt.in, tt.def, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParsePattern(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		wantErr  bool
	}{
		{"*.MyShopify.com", "*.myshopify.com", false},
		{"api.binance.com.", "api.binance.com", false},
		{"127.0.0.1", "127.0.0.1", false},
		{"[::1]", "::1", false},
		{"*.com", "", true},
		{"*", "", true},
		{"a.*.com", "", true},
		{"*.127.0.0.1", "", true},
		{"api.binance.com:443", "", true},
	} {
		got, err := ParsePattern(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParsePattern(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// FuzzParse: a parsed value prints and parses back to itself, its host is
// already normalised, and IP hosts agree with netip.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"api.binance.com", "a.test:8443", "[::1]:80", "127.0.0.1", "bücher.example", "127.1", "[::ffff:1.2.3.4]:1", "A.B."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hp, err := Parse(s, 443)
		if err != nil {
			return
		}
		again, err := Parse(hp.String(), 0)
		if err != nil || again != hp {
			t.Fatalf("Parse(%q) = %v; Parse(%q) = %v, %v", s, hp, hp.String(), again, err)
		}
		if n, err := NormalizeHost(hp.Host); err != nil || n != hp.Host {
			t.Fatalf("host %q of Parse(%q) is not normalised: %q, %v", hp.Host, s, n, err)
		}
		if a, err := netip.ParseAddr(hp.Host); err == nil && a.Unmap().String() != hp.Host {
			t.Fatalf("IP host %q is not netip's canonical %q", hp.Host, a.Unmap())
		}
	})
}

// FuzzParseIP: the shortcut that keeps host names away from netip accepts
// exactly what netip.ParseAddr accepts.
func FuzzParseIP(f *testing.F) {
	for _, s := range []string{"api.binance.com", "127.0.0.1", "1.2.3.4.", "::1", "fe80::1%eth0", "::ffff:1.2.3.4", "0x7f.1", "1e3", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, gotErr := parseIP(s)
		want, wantErr := netip.ParseAddr(s)
		if (gotErr == nil) != (wantErr == nil) || got != want {
			t.Fatalf("parseIP(%q) = %v, %v; netip.ParseAddr = %v, %v", s, got, gotErr, want, wantErr)
		}
	})
}

// BenchmarkNormalizeHost: a CONNECT target's host, normalised for every
// request: a lowercase name, a mixed-case one and an IP.
func BenchmarkNormalizeHost(b *testing.B) {
	for _, h := range []string{"api.binance.com", "API.Binance.com", "127.0.0.1"} {
		b.Run(h, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NormalizeHost(h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
