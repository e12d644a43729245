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
source "$(dirname "$0")/ws-lib.sh"
cd /work/shared/bench
for rep in $(seq "${1:-2}"); do
  taskset -c 1 ./exchange-stack.sh start >/dev/null 2>&1
  echo "direct (exchange, botload on CPU 1): $(load 1 combined -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem)"
  through 1 combined yes "pinned (sluice on CPU 0; exchange, botload on CPU 1)"
  ./exchange-stack.sh stop >/dev/null 2>&1
  ./exchange-stack.sh start >/dev/null 2>&1
  echo "direct (both cores): $(load 0,1 combined -connect 127.0.0.1:18447 -cafile .work/certs/exchange-ca.pem)"
  through 0,1 combined no "shared (every process on both cores)"
  ./exchange-stack.sh stop >/dev/null 2>&1
done
