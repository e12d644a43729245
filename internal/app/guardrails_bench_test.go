package app

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"sluice/internal/testpki"
	"sluice/internal/testredis"
)

// BenchmarkFleetHalt measures a fleet-wide halt: the time from the halt
// request to one instance (POST /v1/halts) to the first order refused on
// another, polled with an order every millisecond; p50 and p99 are
// reported. Two instances share a real Redis.
//
//	go test ./internal/app -run XXX -bench FleetHalt -benchtime 50x
func BenchmarkFleetHalt(b *testing.B) {
	redis := testredis.Start(b)
	upCA := testpki.NewCA(b, "exchange CA")
	srv := upCA.Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"orderId":1,"status":"NEW"}`) }), "api.binance.com")
	caPath := upCA.WritePEM(b, b.TempDir())
	fleet := startFleet(b, 2, redis.URL(), ", timeout: 1s", "hosts:\n"+binanceEntry(caPath, srv)+
		"clients:\n  bot: {addresses: [127.0.0.1], hosts: [api.binance.com], grants: [read, trade]}\n")
	c := fleet[1].client()
	order := func() int {
		code, _ := binanceOrder(b, c, http.MethodPost, "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=1", "", "")
		return code
	}
	token := readFile(b, fleet[0].dir+"/data/admin.token")
	admin := func(method, path, body string) {
		req, _ := http.NewRequest(method, "http://"+fleet[0].addrs["admin"]+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(token))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("%s %s: %v %v", method, path, err, resp)
		}
		resp.Body.Close()
	}
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		admin(http.MethodPost, "/v1/halts", `{"scope":"client:bot","reason":"bench"}`)
		for i := 0; order() != http.StatusForbidden; i++ {
			if i > 10000 {
				b.Fatal("the halt did not reach the other instance")
			}
			time.Sleep(time.Millisecond)
		}
		took = append(took, time.Since(start))
		admin(http.MethodDelete, "/v1/halts?scope=client:bot", "")
		for i := 0; order() != http.StatusOK; i++ {
			if i > 10000 {
				b.Fatal("the resume did not reach the other instance")
			}
			time.Sleep(time.Millisecond)
		}
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
}
