package dialer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"sluice/internal/hostport"
)

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want Class
	}{
		{"8.8.8.8", Public},
		{"2606:4700::1111", Public},
		{"127.0.0.1", Loopback},
		{"127.8.9.10", Loopback},
		{"::1", Loopback},
		{"10.1.2.3", Private},
		{"172.16.0.1", Private},
		{"192.168.1.1", Private},
		{"fd12::1", Private},
		{"169.254.169.254", Metadata},
		{"::ffff:169.254.169.254", Metadata},
		{"fd00:ec2::254", Metadata},
		{"169.254.1.1", LinkLocal},
		{"fe80::1", LinkLocal},
		{"100.64.0.1", SharedCGNAT},
		{"0.0.0.0", Unspecified},
		{"::", Unspecified},
		{"0.1.2.3", Reserved},
		{"224.0.0.1", Multicast},
		{"255.255.255.255", Reserved},
		{"198.18.0.1", Reserved},
		{"64:ff9b::7f00:1", Loopback},    // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", Metadata}, // NAT64 of 169.254.169.254
		{"2002:7f00:1::", Loopback},      // 6to4 of 127.0.0.1
		{"2002:0808:0808::", Public},     // 6to4 of 8.8.8.8
		{"::ffff:10.0.0.1", Private},     // IPv4-mapped
	} {
		if got := Classify(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Classify(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestDialGuard(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	d := New(mapResolver{
		"rebind.test": {netip.MustParseAddr("127.0.0.1")},
		"mixed.test":  {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("127.0.0.1")},
	}, 2*time.Second)
	var refused []Class
	d.OnRefuse = func(c Class) { refused = append(refused, c) }
	target := hostport.HostPort{Host: "rebind.test", Port: port}

	if _, err := d.Dial(context.Background(), target, Route{}); !errors.Is(err, ErrForbidden) {
		t.Errorf("Dial to a name resolving to loopback: err %v, want ErrForbidden", err)
	}
	if _, err := d.Dial(context.Background(), hostport.HostPort{Host: "mixed.test", Port: port}, Route{}); !errors.Is(err, ErrForbidden) {
		t.Errorf("Dial to a name resolving only to private addresses: err %v, want ErrForbidden", err)
	}
	if len(refused) != 3 {
		t.Errorf("OnRefuse called for %v, want 3 addresses", refused)
	}
	c, err := d.Dial(context.Background(), target, Route{AllowPrivate: true})
	if err != nil {
		t.Fatalf("Dial with AllowPrivate: %v", err)
	}
	c.Close()
	to := hostport.HostPort{Host: "127.0.0.1", Port: port}
	if _, err := d.Dial(context.Background(), hostport.HostPort{Host: "public.test", Port: 443}, Route{ConnectTo: &to}); !errors.Is(err, ErrForbidden) {
		t.Errorf("connect_to a loopback address without AllowPrivate: err %v, want ErrForbidden", err)
	}
	var de *Error
	if _, err := d.Dial(context.Background(), hostport.HostPort{Host: "nx.test", Port: 443}, Route{}); !errors.As(err, &de) || de.Op != "resolve" {
		t.Errorf("Dial to an unknown name: err %v, want a resolve error", err)
	}
}
