#!/bin/bash
# The delay sluice adds to market streams against the floor under it on
# the same machine: BenchmarkBurstFloor (internal/streams) writes the same
# bursts over TLS on loopback with nothing else of sluice's, once on a quiet
# machine and once beside the harness's direct load (the fake exchange
# serving 20 bots itself); then sluice serves the same bots (20 x 20 symbols
# x ticker, kline_1m, depth@100ms, 20 s) in the combined and the ccxt
# layout, every process on both cores, and its
# sluice_streams_delivery_delay_seconds is read as shares per bucket.
# Usage: SLUICE_BIN=... SLUICE_SRC=<checkout> ws-floor.sh [reps]
set -euo pipefail
SRC=${SLUICE_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
(cd "$SRC" && go test -c -o /tmp/ws-floor.test ./internal/streams)
floor() { # row benchtime
  /tmp/ws-floor.test -test.run '^$' -test.bench "BurstFloor/$1" -test.benchtime "$2" | grep -E '^BenchmarkBurstFloor' | awk '{printf "%s %s=%s %s=%s %s=%s\n", $1, $6, $5, $8, $7, $10, $9}'
}
source "$(dirname "$0")/ws-lib.sh"
cd /work/shared/bench
for rep in $(seq "${1:-2}"); do
  echo "floor, quiet: $(floor 'clients=20/' 150x)"
  echo "floor, quiet: $(floor 'clients=400/' 60x)"
  ./exchange-stack.sh start >/dev/null 2>&1
  load 0,1 combined -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem >/tmp/ws-floor.direct &
  sleep 2
  echo "floor, beside the direct load: $(floor 'clients=20/' 150x)"
  wait
  echo "direct, combined layout: $(cat /tmp/ws-floor.direct)"
  through 0,1 combined no "sluice, combined layout"
  through 0,1 ccxt no "sluice, ccxt layout"
  ./exchange-stack.sh stop >/dev/null 2>&1
done
