# Functions of ws-pinned.sh and ws-floor.sh, sourced by them; they run in
# ../shared/bench with its fake exchange started. The load: $BOTS (20) bots
# x 20 symbols x (ticker, kline_1m, depth@100ms), 20 s.

# load CPUS LAYOUT ARGS...: botload on CPUS; prints its latency line.
load() {
  taskset -c "$1" .work/bin/botload ws "${@:3}" -stats https://127.0.0.1:18443/stats -stats-ca .work/certs/exchange-ca.pem \
    -symbols 20 -duration 20s -bots "${BOTS:-20}" -layout "$2" 2>&1 | grep -E "latency" | sed -E 's/.*latency/latency/'
}

# buckets: sluice_streams_delivery_delay_seconds's cumulative buckets, "le count".
buckets() { curl -s 127.0.0.1:18490/metrics | sed -nE 's/^sluice_streams_delivery_delay_seconds_bucket\{host="stream.binance.com",le="([^"]+)"\} ([0-9.e+]+)$/\1 \2/p'; }

# share BEFORE AFTER: the deliveries between two bucket files, as shares.
share() {
  join <(sort "$1") <(sort "$2") | awk '{n[$1]=$3-$2} END { t=n["+Inf"]; printf "deliveries=%d", t; split("0.0005 0.001 0.0025 0.005 0.01", les, " "); for (i=1;i<=5;i++) printf " <=%sms:%.1f%%", les[i]*1000, 100*n[les[i]]/t; print "" }'
}

# through CPUS LAYOUT PIN LABEL: starts sluice ($SLUICE_BIN; with PIN=yes
# every thread of it on CPU 0), runs the load through it on CPUS, prints
# sluice's CPU ticks, the load's latency and the delay inside sluice.
through() {
  SLUICE_BIN=$SLUICE_BIN ./sluice-stack.sh start >/dev/null 2>&1
  local pid c0 c1 out
  pid=$(awk '{print $1}' .work/pids/sluice.pids)
  [[ $3 == yes ]] && taskset -a -cp 0 "$pid" >/dev/null
  buckets >/tmp/ws-delay.b0
  c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  out=$(load "$1" "$2" -proxy 127.0.0.1:18400 -cafile .work/sluice/ca.pem)
  c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  buckets >/tmp/ws-delay.b1
  echo "$4: cpu_ticks=$((c1-c0)) $out | inside sluice: $(share /tmp/ws-delay.b0 /tmp/ws-delay.b1)"
  ./sluice-stack.sh stop >/dev/null 2>&1
}
