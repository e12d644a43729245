#!/usr/bin/env bash
# Issue 12's benchmark, on loopback only: cache-hit requests/s (keep-alive)
# and new connections/s through sluice's transparent TLS listener against
# the same through CONNECT, and DNS answers/s of sluice's DNS server against
# dnsmasq (address=/#/...), alternating the two of each pair REPS times.
#
# BENCH is a copy of the shared bench (fake exchange, botload); SLUICE_SRC
# the checkout to build. Needs dnsmasq and dnsperf (Debian).
#   BENCH=/tmp/bench SLUICE_SRC=$PWD docs/bench/transparent-dns.sh
set -euo pipefail
BENCH=${BENCH:?a copy of the shared bench}
SLUICE_SRC=${SLUICE_SRC:-$(pwd)}
REPS=${REPS:-3} DUR=${DUR:-15s} NEW_DUR=${NEW_DUR:-10s} DNS_SECS=${DNS_SECS:-10}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; "$BENCH/exchange-stack.sh" stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT

(cd "$SLUICE_SRC" && CGO_ENABLED=0 go build -o "$W/sluice" ./cmd/sluice)
"$BENCH/exchange-stack.sh" start >/dev/null
cat >"$W/sluice.yaml" <<CONF
listen: {proxy: 127.0.0.1:18400, admin: 127.0.0.1:18490, transparent_tls: 127.0.0.1:18410, dns: 127.0.0.1:18453}
data_dir: $W/data
dns: {answer: [127.0.0.1], rate_limit: "off"}   # one load generator, one client address
hosts:
  api.binance.com: {profile: binance, upstream_ca: $BENCH/.work/certs/exchange-ca.pem, connect_to: 127.0.0.1:18443, allow_private: true}
log: {level: warn}
CONF
"$W/sluice" run -c "$W/sluice.yaml" 2>"$W/sluice.log" &
for _ in $(seq 100); do curl -sf http://127.0.0.1:18490/healthz >/dev/null && break; sleep 0.1; done
dnsmasq --keep-in-foreground --port=18454 --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --address=/#/127.0.0.1 --pid-file="$W/dnsmasq.pid" 2>"$W/dnsmasq.log" &
sleep 0.5

bl() { "$BENCH/.work/bin/botload" hammer -cafile "$W/data/ca.pem" -stats '' -path '/api/v3/ticker/price?symbol=BTCUSDT' "$@" 2>&1; }
rps() { grep -oE '\(([0-9.]+)/s' | head -1 | tr -d '(/s'; }
qps() { awk '/Queries per second/ {print $4}'; }
printf 'api.binance.com A\napi.bybit.com A\napi.kraken.com A\nwww.okx.com A\n' >"$W/queries.txt"

declare -A results
for rep in $(seq "$REPS"); do
  results[connect_hit]+=" $(bl -proxy 127.0.0.1:18400 -conns 64 -duration "$DUR" | rps)"
  results[transparent_hit]+=" $(bl -connect 127.0.0.1:18410 -conns 64 -duration "$DUR" | rps)"
  results[connect_newconn]+=" $(bl -proxy 127.0.0.1:18400 -conns 16 -duration "$NEW_DUR" -newconn | rps)"
  results[transparent_newconn]+=" $(bl -connect 127.0.0.1:18410 -conns 16 -duration "$NEW_DUR" -newconn | rps)"
  results[sluice_dns]+=" $(dnsperf -s 127.0.0.1 -p 18453 -d "$W/queries.txt" -l "$DNS_SECS" -c 8 -T 2 -q 200 2>&1 | qps)"
  results[dnsmasq_dns]+=" $(dnsperf -s 127.0.0.1 -p 18454 -d "$W/queries.txt" -l "$DNS_SECS" -c 8 -T 2 -q 200 2>&1 | qps)"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "| measure | runs | median |"
echo "|---|---|---|"
for k in connect_hit transparent_hit connect_newconn transparent_newconn sluice_dns dnsmasq_dns; do
  echo "| $k |${results[$k]} | $(echo "${results[$k]}" | median) |"
done
ratio() { awk -v a="$(echo "${results[$1]}" | median)" -v b="$(echo "${results[$2]}" | median)" 'BEGIN {printf "%.3f", a/b}'; }
echo
echo "transparent/CONNECT cache hits: $(ratio transparent_hit connect_hit)x; new connections: $(ratio transparent_newconn connect_newconn)x"
echo "sluice/dnsmasq DNS answers: $(ratio sluice_dns dnsmasq_dns)x"
