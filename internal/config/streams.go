package config

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Stream protocols: how an exchange's public WebSocket market streams are
// subscribed, framed and ordered (internal/streams implements each).
const (
	StreamsBinance = "binance"
	StreamsBybit   = "bybit"
)

// StreamsProfile is a profile's `streams`: the exchange's public market
// streams, shared by every client that wants them, and the limits the
// exchange sets on the connections that carry them.
type StreamsProfile struct {
	// Protocol is binance or bybit.
	Protocol string `yaml:"protocol"`
	// StreamsPerConnection is the most streams one upstream connection
	// may carry.
	StreamsPerConnection int `yaml:"streams_per_connection"`
	// MessagesPerSecond is the most messages (JSON, ping and pong) the
	// exchange takes from one connection in a second.
	MessagesPerSecond int `yaml:"messages_per_second"`
	// Connections is the exchange's budget of new connections per IP.
	Connections StreamConnections `yaml:"connections"`
	// Lifetime is how long the exchange keeps a connection open; sluice
	// replaces each one before that.
	Lifetime Duration `yaml:"lifetime"`
	// Replay is how far back the order-book diffs go that a client
	// joining a shared depth stream gets first, so that a depth snapshot
	// of that age (the cache's) lines up with them.
	Replay Duration `yaml:"replay"`
	// Ping is how often sluice pings a connection whose exchange wants
	// pings from its clients (0: the exchange pings).
	Ping Duration `yaml:"ping,omitempty"`
}

// StreamConnections is a budget of new upstream connections.
type StreamConnections struct {
	Limit  int      `yaml:"limit"`
	Window Duration `yaml:"window"`
}

func (s *StreamsProfile) validate() error {
	switch s.Protocol {
	case StreamsBinance, StreamsBybit:
	default:
		return fmt.Errorf("streams.protocol %q: want %s or %s", s.Protocol, StreamsBinance, StreamsBybit)
	}
	if s.StreamsPerConnection <= 0 || s.MessagesPerSecond < 2 || s.Connections.Limit <= 0 || s.Connections.Window <= 0 || s.Lifetime <= 0 {
		return fmt.Errorf("streams: streams_per_connection, connections and lifetime must be positive and messages_per_second at least 2")
	}
	return nil
}

// HostStreams is a host entry's `streams`: "off" (every WebSocket to the
// host is spliced per client), or settings over its profile's.
type HostStreams struct {
	Off bool `yaml:"-"`
	// Lifetime replaces the profile's upstream connection lifetime.
	Lifetime Duration `yaml:"lifetime,omitempty"`
	// Linger is how long a stream nobody wants any more stays subscribed
	// upstream, for a client that comes back. Default 10s.
	Linger Duration `yaml:"linger,omitempty"`
	// ClientQueue caps the bytes waiting to be sent to one client; a
	// client that falls that far behind is closed. Default 4MiB.
	ClientQueue ByteSize `yaml:"client_queue,omitempty"`
	// Standby opens every upstream connection twice, both carrying the
	// same streams, so that one dropping without notice costs no client
	// an event (each is merged by update id, trade id or event time).
	// It doubles the connections and the messages sluice reads.
	Standby bool `yaml:"standby,omitempty"`
	// Silence is how long an upstream connection may bring nothing (no
	// event, no ping) before sluice pings it; one that does not answer
	// within as long again is taken as dropped and redialed. Default 30s.
	Silence Duration `yaml:"silence,omitempty"`
	// Connections replaces the profile's budget of new upstream
	// connections, for an address that other programs share.
	Connections *StreamConnections `yaml:"connections,omitempty"`
}

// UnmarshalYAML accepts "off" or the mapping.
func (hs *HostStreams) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value != "off" {
			return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: streams %q: want off or a mapping", n.Line, n.Value)}}
		}
		hs.Off = true
		return nil
	}
	type plain HostStreams
	return strictDecode(n, (*plain)(hs))
}

// MarshalYAML writes "off" or the mapping.
func (hs HostStreams) MarshalYAML() (any, error) {
	if hs.Off {
		return "off", nil
	}
	type plain HostStreams
	return plain(hs), nil
}
