#!/bin/bash
# The delay sluice adds to market streams, with and without a core of its
# own: 20 bots x 20 symbols x (ticker, kline_1m, depth@100ms), combined
# layout, 20 s a run, alternating
#   direct   - botload straight to the fake exchange
#   shared   - botload through sluice, every process on both cores
#   pinned   - through sluice, sluice on CPU 0, exchange and botload on CPU 1
# Prints botload's latency line and, for sluice, CPU ticks and the share of
# per-client deliveries under each bucket of
# sluice_streams_delivery_delay_seconds. Usage: SLUICE_BIN=... ws-pinned.sh [reps]
set -euo pipefail
cd /work/shared/bench
BOTS=${BOTS:-20}
run() { taskset -c "$1" .work/bin/botload ws "${@:2}" -stats https://127.0.0.1:18443/stats -stats-ca .work/certs/exchange-ca.pem -symbols 20 -duration 20s -bots "$BOTS" -layout combined 2>&1 | grep -E "latency" | sed -E 's/.*latency/latency/'; }
buckets() { curl -s 127.0.0.1:18490/metrics | sed -nE 's/^sluice_streams_delivery_delay_seconds_bucket\{host="stream.binance.com",le="([^"]+)"\} ([0-9.e+]+)$/\1 \2/p'; }
share() { # before-file after-file
  join <(sort "$1") <(sort "$2") | awk '{n[$1]=$3-$2} END { t=n["+Inf"]; printf "events=%d", t; split("0.0005 0.001 0.0025 0.005", les, " "); for (i=1;i<=4;i++) printf " <=%sms:%.1f%%", les[i]*1000, 100*n[les[i]]/t; print "" }'
}
sluice_run() { # cpus-for-load pin-sluice label
  SLUICE_BIN=$SLUICE_BIN ./sluice-stack.sh start >/dev/null 2>&1
  PID=$(awk '{print $1}' .work/pids/sluice.pids)
  [[ $2 == yes ]] && taskset -a -cp 0 "$PID" >/dev/null # every thread, not the main one alone
  buckets >/tmp/ws-pinned.b0
  c0=$(awk '{print $14+$15}' /proc/$PID/stat)
  out=$(run "$1" -proxy 127.0.0.1:18400 -cafile .work/sluice/ca.pem)
  c1=$(awk '{print $14+$15}' /proc/$PID/stat)
  buckets >/tmp/ws-pinned.b1
  echo "$3: cpu_ticks=$((c1-c0)) $out | inside sluice: $(share /tmp/ws-pinned.b0 /tmp/ws-pinned.b1)"
  ./sluice-stack.sh stop >/dev/null 2>&1
}
for rep in $(seq "${1:-2}"); do
  taskset -c 1 ./exchange-stack.sh start >/dev/null 2>&1
  echo "direct (exchange, botload on CPU 1): $(run 1 -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem)"
  sluice_run 1 yes "pinned (sluice on CPU 0; exchange, botload on CPU 1)"
  ./exchange-stack.sh stop >/dev/null 2>&1
  ./exchange-stack.sh start >/dev/null 2>&1
  echo "direct (both cores): $(run 0,1 -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem)"
  sluice_run 0,1 no "shared (every process on both cores)"
  ./exchange-stack.sh stop >/dev/null 2>&1
done
