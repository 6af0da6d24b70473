#!/usr/bin/env bash
# Fan-out benchmark: ringcast vs the in-tree tokio + tokio-tungstenite baseline and the registry
# peers (Node.js ws from npm, Python websockets from PyPI, installed into results/tmp/peers/).
#
#   scripts/bench.sh                 full suite  -> results/*.json, results/*.svg, results/README.md
#   scripts/bench.sh --quick         quick suite -> results/quick/ (validated; nonzero exit on problems)
#   scripts/bench.sh max-1000        only scenarios whose name contains "max-1000"
#   scripts/bench.sh --report-only   rebuild README.md and charts from the JSON files
#
# Environment: RINGCAST_BENCH_SERVER_CPUS (default 0), RINGCAST_BENCH_LOADGEN_CPUS (default 1),
# RINGCAST_BENCH_QUICK=1, RINGCAST_BENCH_RINGCAST_BIN / RINGCAST_BENCH_LOADGEN_BIN (prebuilt
# binaries). The harness itself is benches/fanout.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${CARGO:-cargo}" bench --bench fanout -- "$@"
