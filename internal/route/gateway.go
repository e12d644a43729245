package route

import (
	"net/http"

	"sluice/internal/proxy"
)

// Gateway is the table in force and what every table's pipeline is built
// with. Its zero value serves nothing; set Deps (its Proxy may be the
// server that serves through this Gateway), then Install a table.
type Gateway struct {
	live Live
	// Deps are the components every table's stages use.
	Deps Deps
}

// Install builds t's pipeline and puts it in force. Requests in flight
// finish on the table they started with.
func (g *Gateway) Install(t *Table) {
	t.Build(g.Deps)
	g.Deps.Guard.Prices.Want(t.valuesOrders())
	if old := g.live.Swap(t); old != nil {
		old.Close()
	}
}

// Table returns the table in force.
func (g *Gateway) Table() *Table { return g.live.Load() }

// ServeHTTP serves r through the table in force.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.live.ServeHTTP(w, r) }

// LeafAllowed is the CA's veto: leaves only for hosts the table in force intercepts.
func (g *Gateway) LeafAllowed(host string) error { return g.live.Load().LeafAllowed(host) }

// Backend is the reverse listener's backend in the table in force (nil: none).
func (g *Gateway) Backend() *proxy.Backend { return g.live.Load().Backend }

// ClientCertificates reports whether a client in the table in force may
// present a certificate: only then do handshakes ask for one.
func (g *Gateway) ClientCertificates() bool { return g.live.Load().Vault.Certificates() }

// Close releases the idle upstream connections of the table in force.
func (g *Gateway) Close() { g.live.Load().Close() }

var _ http.Handler = (*Gateway)(nil)
