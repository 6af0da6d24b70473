#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: install what the tests need, run every
# test of the workspace (unit, integration with real sockets, examples, Autobahn conformance),
# then exercise the benchmark harnesses (fan-out, groups, history, cluster, HTTP API) end to end
# in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo test --workspace
RINGCAST_BENCH_QUICK=1 cargo bench --bench fanout
RINGCAST_BENCH_QUICK=1 cargo bench --bench groups
RINGCAST_BENCH_QUICK=1 cargo bench --bench history
RINGCAST_BENCH_QUICK=1 cargo bench --bench cluster
RINGCAST_BENCH_QUICK=1 RINGCAST_BENCH_RUNS=1 cargo bench --bench http
