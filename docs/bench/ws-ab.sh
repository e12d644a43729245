#!/bin/bash
# A/B: direct, sluice (1203fd8), sluice (cork), combined layout 20 bots, alternating.
cd /work/shared/bench
./exchange-stack.sh start >/dev/null 2>&1
run() { .work/bin/botload ws "$@" -stats https://127.0.0.1:18443/stats -stats-ca .work/certs/exchange-ca.pem -symbols 20 -duration 20s 2>&1 | grep -E "events in|latency" | sed -E 's/.*\): //; s/upgrades.*latency/latency/' | tr '\n' ' '; echo; }
for rep in 1 2; do
  echo "direct combined: $(run -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem -bots 20 -layout combined)"
  for bin in sluice sluice-cork; do
    SLUICE_BIN=/tmp/sluice-bench/$bin ./sluice-stack.sh start >/dev/null 2>&1
    PID=$(awk '{print $1}' .work/pids/sluice.pids)
    c0=$(awk '{print $14+$15}' /proc/$PID/stat)
    out=$(run -proxy 127.0.0.1:18400 -cafile .work/sluice/ca.pem -bots 20 -layout combined)
    c1=$(awk '{print $14+$15}' /proc/$PID/stat)
    echo "$bin combined: cpu_ticks=$((c1-c0)) $out"
    c0=$(awk '{print $14+$15}' /proc/$PID/stat)
    out=$(run -proxy 127.0.0.1:18400 -cafile .work/sluice/ca.pem -bots 20 -layout ccxt)
    c1=$(awk '{print $14+$15}' /proc/$PID/stat)
    echo "$bin ccxt: cpu_ticks=$((c1-c0)) $out"
    ./sluice-stack.sh stop >/dev/null 2>&1
  done
done
./exchange-stack.sh stop >/dev/null 2>&1
