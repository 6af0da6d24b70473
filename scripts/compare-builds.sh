#!/bin/bash
# Interleaved old/new ringcast builds (relay mode, 1 shard on CPU 0, loadgen on CPU 1) at a fixed broadcast load: server CPU per delivery and latency.
OLD=${1:?usage: compare-builds.sh OLD_RINGCAST NEW_RINGCAST [LOADGEN]}; NEW=${2:?}; LG=${3:-target/release/ringcast-loadgen}
RATE=${RATE:-500}; SUBS=${SUBS:-1000}; DUR=${DUR:-6}
ulimit -n 20000
port=7500
for round in 1 2 3; do
 for which in old new; do
  port=$((port+1))
  if [ $which = old ]; then BIN=$OLD; EXTRA="${OLD_FLAGS:-}"; else BIN=$NEW; EXTRA="${NEW_FLAGS:---no-api}"; fi
  taskset -c 0 $BIN serve --listen 127.0.0.1:$port --shards 1 --cpus 0 --on-message relay --max-connections 16384 $EXTRA 2>/dev/null & P=$!
  sleep 0.7
  OUT=$(taskset -c 1 $LG --url ws://127.0.0.1:$port/ --connections $SUBS --rate $RATE --duration $DUR --warmup 1 --payload 64 --json --no-progress 2>/dev/null)
  T=$(awk '{print $14+$15}' /proc/$P/stat)
  kill $P; wait $P 2>/dev/null
  echo "$OUT" | python3 -c "
import json,sys; d=json.load(sys.stdin); t=$T/100
print('round $round $which: deliveries/s %.0f p50 %.1f ms p99 %.1f ms lost %d; server CPU %.2f s for %d deliveries (whole run incl. warm-up: %.2f us/delivery upper bound)'%(d['deliveries_per_sec'], d['latency_us']['p50']/1000, d['latency_us']['p99']/1000, d['lost'], t, d['received'], t*1e6/max(1,d['received'])))"
 done
done
