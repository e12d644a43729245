package dialer

import "net/netip"

// Class is the kind of network an address belongs to.
type Class int

const (
	Public Class = iota
	Loopback
	Private     // RFC 1918, RFC 4193 unique-local
	LinkLocal   // 169.254/16 and fe80::/10, where cloud metadata services live
	Metadata    // well-known cloud metadata addresses
	SharedCGNAT // RFC 6598 100.64/10
	Unspecified
	Multicast
	Reserved // documentation, benchmarking, "this network", class E, ...
)

func (c Class) String() string {
	switch c {
	case Public:
		return "public"
	case Loopback:
		return "loopback"
	case Private:
		return "private"
	case LinkLocal:
		return "link-local"
	case Metadata:
		return "cloud-metadata"
	case SharedCGNAT:
		return "carrier-grade-NAT"
	case Unspecified:
		return "unspecified"
	case Multicast:
		return "multicast"
	}
	return "reserved"
}

var (
	metadataAddrs = []netip.Addr{
		netip.MustParseAddr("169.254.169.254"), // AWS, GCP, Azure, OpenStack
		netip.MustParseAddr("169.254.170.2"),   // AWS ECS task metadata
		netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
		netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
	}
	prefixes = []struct {
		p netip.Prefix
		c Class
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), Reserved},
		{netip.MustParsePrefix("100.64.0.0/10"), SharedCGNAT},
		{netip.MustParsePrefix("192.0.0.0/24"), Reserved},
		{netip.MustParsePrefix("192.0.2.0/24"), Reserved},
		{netip.MustParsePrefix("198.18.0.0/15"), Reserved},
		{netip.MustParsePrefix("198.51.100.0/24"), Reserved},
		{netip.MustParsePrefix("203.0.113.0/24"), Reserved},
		{netip.MustParsePrefix("240.0.0.0/4"), Reserved},
		{netip.MustParsePrefix("100::/64"), Reserved},
		{netip.MustParsePrefix("2001:db8::/32"), Reserved},
	}
	// Prefixes whose addresses carry an IPv4 address that the network
	// delivers to: the embedded address is classified instead.
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	nat64Loc  = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Classify returns the class of a; only Public addresses may be dialed
// without allow_private.
func Classify(a netip.Addr) Class {
	a = a.Unmap()
	for _, m := range metadataAddrs {
		if a == m {
			return Metadata
		}
	}
	switch {
	case !a.IsValid() || a.IsUnspecified():
		return Unspecified
	case a.IsLoopback():
		return Loopback
	case a.IsPrivate():
		return Private
	case a.IsLinkLocalUnicast():
		return LinkLocal
	case a.IsMulticast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast():
		return Multicast
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return Reserved
	}
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a) || nat64Loc.Contains(a):
			return Classify(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case sixToFour.Contains(a):
			return Classify(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		}
	}
	for _, p := range prefixes {
		if p.p.Contains(a) {
			return p.c
		}
	}
	return Public
}
