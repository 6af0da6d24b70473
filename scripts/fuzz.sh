#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time on the stable toolchain (docs/fuzzing.md).
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s, all targets)
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Exits non-zero if any target finds a crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(handshake codec command api_body token cluster_wire)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    cargo fuzz run "$t" --sanitizer none -- -max_total_time="$secs" -print_final_stats=1
done
