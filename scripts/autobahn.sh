#!/usr/bin/env bash
# Runs the Autobahn|Testsuite server cases (wstest -m fuzzingclient) against `ringcast serve`
# in relay mode. With the suite's single client connection, relay is an echo server.
#
#   scripts/autobahn.sh [--ringcast BIN] [--out DIR] [--reports DIR] [--cases '1.*,2.*']
#
#   --ringcast BIN  daemon to test (default: target/release/ringcast)
#   --out DIR       where summary.json and SUMMARY.md go (default: results/autobahn)
#   --reports DIR   wstest's full reports (HTML + one JSON per case), the spec, the server's and
#                   wstest's logs (default: .autobahn/reports; wiped at the start of a run)
#   --cases LIST    comma-separated case patterns instead of "*" (for debugging one area)
#
# Compression cases (12.*, 13.*) are excluded while permessage-deflate is not offered.
# Exit status: 0 when every case ran and none failed; 1 otherwise (see SUMMARY.md for which).
# A case fails when its behavior is anything but OK, NON-STRICT or INFORMATIONAL
# (FAILED, UNIMPLEMENTED, ...), or its close behavior is FAILED or UNCLEAN.
# Environment: AUTOBAHN_TIMEOUT (seconds for the whole wstest run, default 900;
#              a full run takes ~20 s against a working echo server),
#              RUST_LOG (passed to the daemon, default "info").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WSTEST="$ROOT/.autobahn/venv/bin/wstest"
VPY="$ROOT/.autobahn/venv/bin/python"

BIN="$ROOT/target/release/ringcast"
OUT="$ROOT/results/autobahn"
REPORTS="$ROOT/.autobahn/reports"
CASES="*"
EXCLUDE_CASES="12.*,13.*"
TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --ringcast) BIN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --reports) REPORTS="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -x "$WSTEST" && -x "$VPY" ]] \
    || die "$WSTEST not found: run scripts/install-test-deps.sh first (it installs Autobahn|Testsuite into .autobahn/venv)"
[[ -x "$BIN" ]] || die "ringcast binary not found or not executable: $BIN (cargo build --release --bin ringcast)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
REPORTS="$(cd "$REPORTS" && pwd)"

export PYTHONWARNINGS=ignore

# A free loopback port (small race between closing it here and the daemon binding it).
PORT="$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ADDR="127.0.0.1:$PORT"

SERVER_CMD=("$BIN" serve --listen "$ADDR" --shards 1 --on-message relay --no-api
    --max-message-bytes 16777216 --ping-interval 300s --idle-timeout 600s)

SERVER_PID=""
WSTEST_PID=""
cleanup() {
    local pid
    for pid in "$WSTEST_PID" "$SERVER_PID"; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "server: ${SERVER_CMD[*]}"
RUST_LOG="${RUST_LOG:-info}" "${SERVER_CMD[@]}" >"$REPORTS/server.log" 2>&1 &
SERVER_PID=$!

# Wait until the port accepts connections.
ready=0
for _ in $(seq 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$REPORTS/server.log" >&2; die "server exited before listening (log: $REPORTS/server.log)"; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then ready=1; break; fi
    sleep 0.1
done
[[ $ready == 1 ]] || { tail -n 30 "$REPORTS/server.log" >&2; die "server did not listen on $ADDR within 30 s"; }
log "server: listening on $ADDR (pid $SERVER_PID)"

# fuzzingclient spec
json_list() { "$VPY" -c 'import json, sys; print(json.dumps([c.strip() for c in sys.argv[1].split(",") if c.strip()]))' "$1"; }
SPEC="$REPORTS/fuzzingclient.json"
cat >"$SPEC" <<EOF
{
    "outdir": "$REPORTS",
    "servers": [{ "agent": "ringcast", "url": "ws://$ADDR" }],
    "cases": $(json_list "$CASES"),
    "exclude-cases": $(json_list "$EXCLUDE_CASES"),
    "exclude-agent-cases": {}
}
EOF

WSTEST_CMD=("$WSTEST" -m fuzzingclient -s "$SPEC")
log "wstest: ${WSTEST_CMD[*]} (log: $REPORTS/wstest.log, timeout ${TIMEOUT}s)"
start=$(date +%s)
(cd "$REPORTS" && exec timeout "$TIMEOUT" "${WSTEST_CMD[@]}") >"$REPORTS/wstest.log" 2>&1 &
WSTEST_PID=$!
wstest_rc=0
wait "$WSTEST_PID" || wstest_rc=$?
WSTEST_PID=""
elapsed=$(( $(date +%s) - start ))
log "wstest: exit $wstest_rc after ${elapsed}s"

server_alive=1
kill -0 "$SERVER_PID" 2>/dev/null || server_alive=0
[[ $server_alive == 1 ]] || log "server: DIED during the run (log: $REPORTS/server.log)"

COMMIT="$(git -C "$ROOT" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)"

summary_rc=0
"$VPY" - "$REPORTS" "$OUT" "$SPEC" "$COMMIT" "$elapsed" "$wstest_rc" "$server_alive" \
    "$(printf '%q ' "${SERVER_CMD[@]}")" "$(printf '%q ' "${WSTEST_CMD[@]}")" <<'PY' || summary_rc=$?
# -*- coding: utf-8 -*-
# Summarize wstest's index.json into summary.json and SUMMARY.md (Python 2.7).
from __future__ import print_function
import io, json, os, re, sys, time
from collections import Counter

reports, out, spec_path, commit, elapsed, wstest_rc, server_alive, server_cmd, wstest_cmd = sys.argv[1:10]
elapsed, wstest_rc, server_alive = int(elapsed), int(wstest_rc), server_alive == "1"
AGENT = "ringcast"
OK_BEHAVIOR = ("OK", "NON-STRICT", "INFORMATIONAL")
BAD_CLOSE = ("FAILED", "UNCLEAN")

from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories, CaseSetname, CaseBasename
from autobahntestsuite.caseset import CaseSet
spec = json.load(open(spec_path))
expected = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories).parseSpecCases(spec)

def case_key(c):
    return tuple(int(x) for x in c.split("."))

index_path = os.path.join(reports, "index.json")
results = {}
if os.path.exists(index_path):
    results = json.load(open(index_path)).get(AGENT, {})

def case_report(case):
    rf = results[case].get("reportfile")
    try:
        return json.load(open(os.path.join(reports, rf)))
    except Exception:
        return {}

def plain(s):
    s = re.sub(r"<br\s*/?>", " ", s or "")
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", s)).strip()

def short(obj, n=300):
    s = json.dumps(obj, ensure_ascii=True)
    return s if len(s) <= n else s[:n] + "... (%d chars)" % len(s)

cases = sorted(results, key=case_key)
failed = [c for c in cases
          if results[c]["behavior"] not in OK_BEHAVIOR or results[c]["behaviorClose"] in BAD_CLOSE]
missing = sorted(set(expected) - set(cases), key=case_key)
not_ok = [c for c in cases if results[c]["behavior"] != "OK" or results[c]["behaviorClose"] != "OK"]
b_counts = Counter(results[c]["behavior"] for c in cases)
bc_counts = Counter(results[c]["behaviorClose"] for c in cases)
date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
passed = not failed and not missing and wstest_rc == 0 and server_alive and len(cases) > 0

problems = []
if failed: problems.append("%d failed case(s)" % len(failed))
if missing: problems.append("%d case(s) did not run" % len(missing))
if wstest_rc != 0: problems.append("wstest exited %d" % wstest_rc)
if not server_alive: problems.append("the server died during the run")
if not cases: problems.append("no results (no index.json)")

# summary.json: fixed layout, one case per line, so tests can check it without a JSON parser.
lines = ["{",
         '  "agent": %s,' % json.dumps(AGENT),
         '  "date": %s,' % json.dumps(date),
         '  "commit": %s,' % json.dumps(commit),
         '  "passed": %s,' % json.dumps(passed),
         '  "total": %d,' % len(cases),
         '  "expected_total": %d,' % len(expected),
         '  "failed_count": %d,' % len(failed),
         '  "failed": %s,' % json.dumps(failed),
         '  "missing": %s,' % json.dumps(missing),
         '  "excluded": %s,' % json.dumps(spec.get("exclude-cases", [])),
         '  "behavior_counts": %s,' % json.dumps(dict(b_counts), sort_keys=True),
         '  "behavior_close_counts": %s,' % json.dumps(dict(bc_counts), sort_keys=True),
         '  "duration_s": %d,' % elapsed,
         '  "cases": {']
for i, c in enumerate(cases):
    r = results[c]
    lines.append('    %s: {"behavior": %s, "behaviorClose": %s}%s' % (
        json.dumps(c), json.dumps(r["behavior"]), json.dumps(r["behaviorClose"]),
        "," if i + 1 < len(cases) else ""))
lines += ["  }", "}"]
with io.open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    f.write(u"\n".join(lines) + u"\n")
json.load(open(os.path.join(out, "summary.json")))  # sanity: it is valid JSON

md = []
md.append("# Autobahn|Testsuite results: ringcast (relay mode, one client = echo)")
md.append("")
md.append("**%s**: %d of %d cases ran, %d failed%s." % (
    "PASS" if passed else "FAIL", len(cases), len(expected), len(failed),
    "" if passed else " (" + "; ".join(problems) + ")"))
md.append("")
md.append("- date: %s" % date)
md.append("- ringcast commit: `%s`" % commit)
md.append("- server: `%s`" % server_cmd.strip())
md.append("- client: `%s` (Autobahn|Testsuite fuzzingclient, installed by `scripts/install-test-deps.sh`)" % wstest_cmd.strip())
md.append("- cases: `%s`, excluded: `%s` (compression: permessage-deflate is not offered)" % (
    json.dumps(spec.get("cases")), json.dumps(spec.get("exclude-cases", []))))
import autobahn, autobahntestsuite
md.append("- testsuite: AutobahnTestSuite %s (Autobahn %s)" % (autobahntestsuite.version, autobahn.version))
md.append("- wstest run time: %d s" % elapsed)
md.append("- reproduce: `scripts/install-test-deps.sh && cargo build --release --bin ringcast && scripts/autobahn.sh`")
md.append("")
md.append("Pass rule: behavior OK, NON-STRICT or INFORMATIONAL, and close behavior not FAILED/UNCLEAN.")
md.append("")
md.append("| behavior | cases |")
md.append("| --- | ---: |")
for k, v in sorted(b_counts.items()):
    md.append("| %s | %d |" % (k, v))
md.append("")
md.append("| close behavior | cases |")
md.append("| --- | ---: |")
for k, v in sorted(bc_counts.items()):
    md.append("| %s | %d |" % (k, v))
md.append("")
if missing:
    md.append("## Cases that did not run (%d)" % len(missing))
    md.append("")
    md.append(", ".join(missing))
    md.append("")
md.append("## Cases not fully OK (%d)" % len(not_ok))
md.append("")
if not not_ok:
    md.append("None.")
for c in not_ok:
    r = results[c]
    rep = case_report(c)
    md.append("### %s: %s / close %s%s" % (c, r["behavior"], r["behaviorClose"], "  **FAILED**" if c in failed else ""))
    md.append("")
    md.append("- description: %s" % plain(rep.get("description")))
    md.append("- expectation: %s" % plain(rep.get("expectation")))
    md.append("- result: %s" % plain(rep.get("result")))
    md.append("- close: %s (remote close code %s, reason %s)" % (
        plain(rep.get("resultClose")), r.get("remoteCloseCode"), json.dumps(rep.get("remoteCloseReason"))))
    md.append("- received: `%s`" % short(rep.get("received")))
    md.append("- expected: `%s`" % short(rep.get("expected")))
    if c in failed:
        md.append("- expected close: `%s`" % short(rep.get("expectedClose")))
        md.append("- full report: `%s`" % r.get("reportfile"))
    md.append("")
with io.open(os.path.join(out, "SUMMARY.md"), "w", encoding="utf-8") as f:
    f.write(u"\n".join(md) + u"\n")

print("[autobahn] %s: %d/%d cases ran in %ds; behavior %s; close %s; failed: %s%s" % (
    "PASS" if passed else "FAIL", len(cases), len(expected), elapsed,
    json.dumps(dict(b_counts), sort_keys=True), json.dumps(dict(bc_counts), sort_keys=True), ", ".join(failed) or "none",
    "" if passed else " (" + "; ".join(problems) + ")"), file=sys.stderr)
sys.exit(0 if passed else 1)
PY

log "summary: $OUT/summary.json, $OUT/SUMMARY.md; full reports: $REPORTS/index.html"
if [[ $summary_rc != 0 ]]; then
    if [[ $wstest_rc != 0 ]]; then log "wstest log tail:"; tail -n 20 "$REPORTS/wstest.log" >&2; fi
    if [[ $server_alive == 0 ]]; then log "server log tail:"; tail -n 20 "$REPORTS/server.log" >&2; fi
    exit 1
fi
