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
cd /work/shared/bench
load() { # layout extra-args...
  .work/bin/botload ws "${@:2}" -stats https://127.0.0.1:18443/stats -stats-ca .work/certs/exchange-ca.pem -symbols 20 -duration 20s -bots 20 -layout "$1" 2>&1 | grep -E "latency" | sed -E 's/.*latency/latency/'
}
buckets() { curl -s 127.0.0.1:18490/metrics | sed -nE 's/^sluice_streams_delivery_delay_seconds_bucket\{host="stream.binance.com",le="([^"]+)"\} ([0-9.e+]+)$/\1 \2/p'; }
share() { # before-file after-file
  join <(sort "$1") <(sort "$2") | awk '{n[$1]=$3-$2} END { t=n["+Inf"]; printf "deliveries=%d", t; split("0.0005 0.001 0.0025 0.005 0.01", les, " "); for (i=1;i<=5;i++) printf " <=%sms:%.1f%%", les[i]*1000, 100*n[les[i]]/t; print "" }'
}
through() { # layout
  SLUICE_BIN=$SLUICE_BIN ./sluice-stack.sh start >/dev/null 2>&1
  PID=$(awk '{print $1}' .work/pids/sluice.pids)
  buckets >/tmp/ws-floor.b0
  c0=$(awk '{print $14+$15}' /proc/$PID/stat)
  out=$(load "$1" -proxy 127.0.0.1:18400 -cafile .work/sluice/ca.pem)
  c1=$(awk '{print $14+$15}' /proc/$PID/stat)
  buckets >/tmp/ws-floor.b1
  echo "sluice, $1 layout: cpu_ticks=$((c1-c0)) $out | inside sluice: $(share /tmp/ws-floor.b0 /tmp/ws-floor.b1)"
  ./sluice-stack.sh stop >/dev/null 2>&1
}
for rep in $(seq "${1:-2}"); do
  echo "floor, quiet: $(floor 'clients=20/' 150x)"
  echo "floor, quiet: $(floor 'clients=400/' 60x)"
  ./exchange-stack.sh start >/dev/null 2>&1
  load combined -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem >/tmp/ws-floor.direct &
  sleep 2
  echo "floor, beside the direct load: $(floor 'clients=20/' 150x)"
  wait
  echo "direct, combined layout: $(cat /tmp/ws-floor.direct)"
  through combined
  through ccxt
  ./exchange-stack.sh stop >/dev/null 2>&1
done
