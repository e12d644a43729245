package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"sluice/internal/decision"
	"sluice/internal/hostport"
	"sluice/internal/obs"
)

// Backend is the reverse listener's current settings.
type Backend struct {
	// Target and Scheme are the backend's origin.
	Target hostport.HostPort
	Scheme decision.Scheme
	// Trusted are the peers whose X-Forwarded-For, or PROXY protocol
	// header, names the real client.
	Trusted []netip.Prefix
	// Cert makes the listener HTTPS; nil: plain HTTP.
	Cert *tls.Certificate
}

func (b *Backend) trusts(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range b.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Identify fixes r's target, and where a trusted proxy names it the real
// client, in rec, from r's entry point: the CONNECT line or the absolute
// URI on the forward listener, the CONNECT target for a request inside an
// intercepted connection (whose Host must name the same host), the backend
// for the reverse listener (rev; nil when the config has none any more).
// The target never comes from a header the client can forge.
func Identify(r *http.Request, rec *decision.Record, rev *Backend) *obs.Error {
	switch rec.Entry {
	case decision.EntryIntercept:
		return identifyIntercepted(r, rec)
	case decision.EntryReverse:
		if rev != nil {
			rec.Target, rec.Scheme = rev.Target, rev.Scheme
			rec.ClientIP = realClient(r, rec.ClientIP, rev)
		}
		return nil
	case decision.EntryTransparentHTTP:
		if r.Method == http.MethodConnect {
			return &obs.Error{Status: http.StatusMethodNotAllowed, Msg: "CONNECT on the transparent listener",
				Detail: "listen.transparent_http takes plain requests, routed by Host; send CONNECT to listen.proxy"}
		}
		// The client believes it talks to the host itself, on port 80.
		hp, err := hostport.Parse(r.Host, 80)
		if err != nil {
			return &obs.Error{Status: http.StatusBadRequest, Msg: "bad host", Host: r.Host,
				Detail: fmt.Sprintf("the transparent listener routes by Host: %v", err)}
		}
		rec.Target, rec.Scheme = hp, decision.HTTP
		return nil
	}
	if r.Method == http.MethodConnect {
		if rec.Entry != decision.EntryTransparentTLS {
			rec.Entry = decision.EntryConnect
		} else if r.Host == "" {
			return &obs.Error{Status: http.StatusBadRequest, Msg: "no SNI",
				Detail: "the transparent listener routes TLS by the ClientHello's server name, and this one names none"}
		}
		if r.URL.Path != "" || r.URL.Scheme != "" || r.URL.RawQuery != "" {
			// RFC 9110 §9.3.6: the target is host:port, never a path that
			// would leave the Host header to name it.
			return &obs.Error{Status: http.StatusBadRequest, Msg: "bad CONNECT target", Host: r.Host,
				Detail: fmt.Sprintf("CONNECT takes host:port (authority form), not %q", r.RequestURI)}
		}
		hp, err := hostport.Parse(r.Host, 443)
		if err != nil {
			return &obs.Error{Status: http.StatusBadRequest, Msg: "bad CONNECT target", Host: r.Host, Detail: err.Error()}
		}
		rec.Target, rec.Scheme = hp, decision.HTTPS
		return nil
	}
	if !r.URL.IsAbs() || r.URL.Host == "" {
		return &obs.Error{Status: http.StatusBadRequest, Msg: "not a proxy request",
			Detail: fmt.Sprintf("sluice is a forward proxy: send CONNECT host:443 or an absolute URI (GET http://host/path), not %q", r.URL.Path)}
	}
	switch r.URL.Scheme {
	case "http":
		rec.Scheme = decision.HTTP
	case "https": // the client asks sluice to make the TLS connection
		rec.Scheme = decision.HTTPS
	default:
		return &obs.Error{Status: http.StatusBadRequest, Msg: "unsupported scheme", Host: r.URL.Host,
			Detail: fmt.Sprintf("scheme %q: sluice forwards http and https", r.URL.Scheme)}
	}
	hp, err := hostport.Parse(r.URL.Host, rec.Scheme.DefaultPort())
	if err != nil {
		return &obs.Error{Status: http.StatusBadRequest, Msg: "bad host", Host: r.URL.Host, Detail: err.Error()}
	}
	rec.Target = hp
	return nil
}

// identifyIntercepted takes the CONNECT target of r's connection and
// refuses a Host (or :authority) that names another: an allowed tunnel must
// not carry requests for another host.
func identifyIntercepted(r *http.Request, rec *decision.Record) *obs.Error {
	t, ok := r.Context().Value(sessionKey{}).(*session)
	if !ok {
		return &obs.Error{Status: http.StatusInternalServerError, Msg: "internal error", Err: fmt.Errorf("intercepted request without its CONNECT target")}
	}
	rec.SetTarget(t.target, t.key)
	rec.Scheme, rec.Client = decision.HTTPS, t.client
	if r.Host == t.authority || r.Host == t.key {
		return nil // the common case, without parsing
	}
	if hp, err := hostport.Parse(r.Host, t.target.Port); err != nil || hp != t.target {
		return &obs.Error{Status: http.StatusMisdirectedRequest, Msg: "host does not match the CONNECT target", Host: r.Host,
			Detail:      fmt.Sprintf("this connection was opened with CONNECT %s; a request for %q needs its own CONNECT", t.target, r.Host),
			ProxyStatus: "http_request_denied"}
	}
	return nil
}

// realClient returns the client of a request from a trusted peer: the last
// address in X-Forwarded-For that is not itself trusted (the rightmost is
// the one the nearest trusted proxy saw). From any other peer the header
// is ignored: a client cannot name itself.
func realClient(r *http.Request, peerIP string, rev *Backend) string {
	peer, ok := addrOf(peerIP)
	if !ok || len(rev.Trusted) == 0 || !rev.trusts(peer) {
		return peerIP
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for h := range strings.SplitSeq(v, ",") {
			hops = append(hops, strings.TrimSpace(h))
		}
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := addrOf(hops[i])
		if !ok {
			break // a hop that is no address: trust nothing beyond it
		}
		if !rev.trusts(a) {
			return a.String()
		}
	}
	return peerIP
}

func addrOf(s string) (netip.Addr, bool) {
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err == nil
}
