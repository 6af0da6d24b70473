#!/bin/bash
# TLS broadcast cost: one TLS-enabled ringcast build serving ws:// (--listen) and wss://
# (--tls-listen), relay mode, 1 shard on CPU 0, load generator on CPU 1; interleaved rounds of
# plain (ring-cast loadgen, ws://) and TLS (loadgen's wss:// mode) at the same fixed broadcast
# load, plus a TLS "handshakes only" run (connect, publish 1 msg/s for 1 s) to subtract the
# handshake CPU. Prints server CPU per delivery for each run.
# usage: scripts/tls-bench.sh RINGCAST LOADGEN CERT_DIR   (CERT_DIR from examples/tls_test_cert)
BIN=${1:?usage: tls-bench.sh RINGCAST LOADGEN CERT_DIR}; LG=${2:?}; CERTS=${3:?}
RATE=${RATE:-200}; SUBS=${SUBS:-1000}; DUR=${DUR:-8}; PAYLOAD=${PAYLOAD:-64}; ROUNDS=${ROUNDS:-3}
ulimit -n 20000
port=7700
run() { # which rate duration warmup
  local which=$1 rate=$2 dur=$3 warm=$4
  port=$((port+2))
  taskset -c 0 $BIN serve --listen 127.0.0.1:$port --tls-listen 127.0.0.1:$((port+1)) \
    --tls-cert-file $CERTS/cert.pem --tls-key-file $CERTS/key.pem \
    --shards 1 --cpus 0 --on-message relay --max-connections 16384 --no-api 2>/dev/null & local P=$!
  sleep 0.7
  if [ $which = plain ]; then
    OUT=$(taskset -c 1 $LG --url ws://127.0.0.1:$port/ --connections $SUBS --rate $rate --duration $dur --warmup $warm --payload $PAYLOAD --threads 1 --json --no-progress 2>/dev/null)
  else
    OUT=$(taskset -c 1 $LG --url wss://localhost:$((port+1))/ --tls-ca $CERTS/ca.pem --connections $SUBS --rate $rate --duration $dur --warmup $warm --payload $PAYLOAD --json 2>/dev/null)
  fi
  local T=$(awk '{print $14+$15}' /proc/$P/stat)
  kill $P; wait $P 2>/dev/null
  echo "$OUT" | python3 -c "
import json,sys; d=json.load(sys.stdin); t=$T/100
print('round $round %-9s rate %5d: deliveries/s %7.0f p50 %6.2f ms p99 %6.2f ms lost %d; server CPU %.2f s for %d deliveries (%.3f us/delivery whole run)'%('$which', $rate, d['deliveries_per_sec'], d['latency_us']['p50']/1000, d['latency_us']['p99']/1000, d['lost'], t, d['received'], t*1e6/max(1,d['received'])))"
}
for round in $(seq 1 $ROUNDS); do
  run plain $RATE $DUR 1
  run tls $RATE $DUR 1
  run tls-hs 1 1 0.1
done
