#!/bin/bash
# Interleaved broadcast find-max of two ringcast builds (relay mode, 1 shard on CPU 0, loadgen on
# CPU 1, SUBS subscribers x PAYLOAD B): the highest deliveries/s with p99 under the bound and
# at least 99% delivered, per round, old beside new.
OLD=${1:?usage: findmax-builds.sh OLD_RINGCAST NEW_RINGCAST [LOADGEN]}; NEW=${2:?}; LG=${3:-target/release/ringcast-loadgen}
SUBS=${SUBS:-1000}; PAYLOAD=${PAYLOAD:-64}; DUR=${DUR:-3}; START=${START:-200}; ROUNDS=${ROUNDS:-3}
ulimit -n 20000
port=7800
for round in $(seq 1 $ROUNDS); do
 for which in old new; do
  port=$((port+1))
  if [ $which = old ]; then BIN=$OLD; else BIN=$NEW; fi
  taskset -c 0 $BIN serve --listen 127.0.0.1:$port --shards 1 --cpus 0 --on-message relay --max-connections 16384 --no-api 2>/dev/null & P=$!
  sleep 0.7
  OUT=$(taskset -c 1 $LG --url ws://127.0.0.1:$port/ --connections $SUBS --payload $PAYLOAD --find-max --start-rate $START --rate-step-factor 1.5 --max-steps 12 --duration $DUR --warmup 1 --json --no-progress 2>/dev/null)
  kill $P; wait $P 2>/dev/null
  echo "$OUT" | python3 -c "
import json,sys; d=json.load(sys.stdin); f=d['find_max']; b=f['best']
steps=' '.join('%.0f%s'%(s['deliveries_per_sec'],'' if s is not None else '') for s in f['steps'])
print('round $round $which: find-max %.0f deliveries/s (p99 %.1f ms at the best step); steps: %s'%(b['deliveries_per_sec'] if b else 0, b['latency_us']['p99']/1000 if b else 0, steps))"
 done
done
