#!/usr/bin/env bash
# Installs everything ringcast's test suite needs that cargo does not fetch itself.
# This is the single place that installs test dependencies: CI's .ci/run calls it before
# `cargo nextest run` / `cargo test`, and developers run it once by hand.
#
# Idempotent: a second run checks what is there and installs nothing new.
#
# What it installs:
#   1. Debian packages (as root, non-interactive): redis-server and redis-tools (redis-cli), for
#      the cluster tests (tests/cluster.rs start their own redis-server processes, including a
#      three-master Redis Cluster, which needs Redis >= 7 for sharded pub/sub: Debian 12's
#      redis-server is 7.0); chromium, nodejs and npm, for the demo page's browser test
#      (tests/browser.rs). Set RINGCAST_SKIP_APT=1 to skip this step.
#   2. .autobahn/venv: a Python 2.7 virtualenv (gitignored) built from pyenv's 2.7.18, with
#      Autobahn|Testsuite (`wstest`) and a fully pinned dependency set, for tests/autobahn.rs.
#      Set PY27=/path/to/python2.7 to use another interpreter.
#   3. .venv: a Python 3 virtualenv (gitignored) with scripts/test-requirements.txt (pinned),
#      e.g. `websockets` for tests/tls.rs. Set PYTHON3=/path/to/python3 to use another one.
#   4. tests/browser/node_modules: playwright-core at the version pinned in
#      tests/browser/package-lock.json (`npm ci`). It drives Debian's /usr/bin/chromium;
#      PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 makes sure nothing downloads a browser.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AB_DIR="$ROOT/.autobahn"
VENV="$AB_DIR/venv"

log() { printf '[install-test-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------------
# "command" when the package has the command's name, "command:package" otherwise.
APT_PACKAGES=(redis-server redis-cli:redis-tools chromium node:nodejs npm)

install_apt_packages() {
    if [[ "${RINGCAST_SKIP_APT:-0}" == 1 ]]; then
        log "apt: skipped (RINGCAST_SKIP_APT=1)"
        return
    fi
    local missing=() missing_cmds=() entry cmd pkg
    for entry in "${APT_PACKAGES[@]}"; do
        cmd="${entry%%:*}" pkg="${entry#*:}"
        if command -v "$cmd" >/dev/null 2>&1; then
            log "apt: $pkg already installed ($(command -v "$cmd"))"
        else
            missing+=("$pkg")
            missing_cmds+=("$cmd")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && { check_redis_version; return; }

    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "apt: apt-get update"
    "${sudo[@]}" apt-get update -q
    log "apt: apt-get install -y --no-install-recommends ${missing[*]}"
    "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    for cmd in "${missing_cmds[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "apt: $cmd still not on PATH after install"
    done
    check_redis_version
}

# Sharded pub/sub (SSUBSCRIBE/SPUBLISH), used by the Redis Cluster tests, needs Redis >= 7.
check_redis_version() {
    local v major
    v="$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')"
    major="${v%%.*}"
    [[ -n "$major" && "$major" -ge 7 ]] \
        || die "redis-server $v is older than 7 (no sharded pub/sub); on Debian 11 install it from bullseye-backports or use Debian 12+"
    log "apt: redis-server $v (>= 7: sharded pub/sub available)"
}

# ---------------------------------------------------------------------------------------------
# 2. Autobahn|Testsuite in a Python 2.7 virtualenv
# ---------------------------------------------------------------------------------------------
# autobahntestsuite 25.10.1 is the current release; it runs on Python 2.7 only and pins its
# direct dependencies exactly (autobahn 0.10.9, Twisted 19.10.0, cryptography 3.3.2, ...).
# The transitive ones are pinned here too, to the last versions that support 2.7, so that a
# new upload to PyPI cannot change what CI installs. All of these install from cp27 manylinux
# wheels or pure-Python sdists; wsaccel builds a small C extension (gcc + pyenv's headers).
AUTOBAHN_REQUIREMENTS='
autobahntestsuite==25.10.1
autobahn[twisted,accelerate]==0.10.9
Twisted==19.10.0
txaio==2.1.0
wsaccel==0.6.6
ujson==2.0.3
six==1.16.0
setuptools==44.0.0
incremental==16.10.1
zope.interface==4.6.0
constantly==15.1.0
Automat==22.10.0
attrs==21.4.0
hyperlink==21.0.0
idna==2.10
typing==3.10.0.0
PyHamcrest==1.10.1
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
Jinja2==2.11.3
MarkupSafe==1.1.1
Werkzeug==1.0.1
klein==17.10.0
unittest2==1.1.0
argparse==1.4.0
linecache2==1.0.0
traceback2==1.4.0
'

# virtualenv 20.15.1 is the last line that both runs on 2.7 and seeds 2.7 envs (pip 20.3.4,
# setuptools 44.1.1, wheel 0.37.1 are bundled, nothing is downloaded when seeding). It is
# installed with --target into .autobahn/bootstrap so pyenv's 2.7.18 itself is left untouched.
VIRTUALENV_REQUIREMENTS='
virtualenv==20.15.1
distlib==0.4.4
filelock==3.2.1
platformdirs==2.0.2
six==1.17.0
importlib-metadata==2.1.3
importlib-resources==3.3.1
pathlib2==2.3.7.post1
contextlib2==0.6.0.post1
zipp==1.2.0
configparser==4.0.2
scandir==1.10.0
singledispatch==3.7.0
typing==3.10.0.0
'

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1 PIP_NO_INPUT=1
export PYTHONWARNINGS=ignore

find_python27() {
    if [[ -n "${PY27:-}" ]]; then
        echo "$PY27"; return
    fi
    local root cand
    if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then
        for cand in "$root/versions/2.7.18/bin/python" "$root"/versions/2.7*/bin/python; do
            [[ -x "$cand" ]] && { echo "$cand"; return; }
        done
    fi
    for cand in "$HOME/.pyenv/versions/2.7.18/bin/python" python2.7 python2; do
        command -v "$cand" >/dev/null 2>&1 && { command -v "$cand"; return; }
    done
    return 1
}

requirements_stamp() {
    printf '%s\n%s\n' "$AUTOBAHN_REQUIREMENTS" "$VIRTUALENV_REQUIREMENTS" | sha256sum | cut -d' ' -f1
}

venv_is_current() {
    [[ -x "$VENV/bin/python" && -x "$VENV/bin/wstest" && -f "$VENV/.ringcast-stamp" ]] || return 1
    [[ "$(cat "$VENV/.ringcast-stamp")" == "$(requirements_stamp)" ]] || return 1
    "$VENV/bin/wstest" --autobahnversion >/dev/null 2>&1
}

install_autobahn() {
    if venv_is_current; then
        log "autobahn: $VENV is up to date ($("$VENV/bin/wstest" --autobahnversion 2>/dev/null | tr '\n' ' '))"
        return
    fi

    local py27
    py27="$(find_python27)" || die "no Python 2.7 found (expected pyenv's 2.7.18: \$(pyenv root)/versions/2.7.18/bin/python); set PY27="
    "$py27" -c 'import sys; assert sys.version_info[:2] == (2, 7), sys.version' \
        || die "$py27 is not Python 2.7"
    log "autobahn: using $py27 ($("$py27" -V 2>&1))"

    mkdir -p "$AB_DIR"
    local boot="$AB_DIR/bootstrap"
    if ! PYTHONPATH="$boot" "$py27" -m virtualenv --version >/dev/null 2>&1; then
        log "autobahn: installing virtualenv into $boot"
        rm -rf "$boot"
        printf '%s\n' "$VIRTUALENV_REQUIREMENTS" >"$AB_DIR/virtualenv-requirements.txt"
        "$py27" -m pip install -q --target "$boot" -r "$AB_DIR/virtualenv-requirements.txt"
    fi

    log "autobahn: creating virtualenv $VENV"
    rm -rf "$VENV"
    PYTHONPATH="$boot" "$py27" -m virtualenv --no-periodic-update --no-download \
        --app-data "$AB_DIR/virtualenv-app-data" "$VENV" >/dev/null

    log "autobahn: pip install autobahntestsuite and pinned dependencies"
    printf '%s\n' "$AUTOBAHN_REQUIREMENTS" >"$AB_DIR/requirements.txt"
    "$VENV/bin/pip" install -q -r "$AB_DIR/requirements.txt"
    "$VENV/bin/pip" check

    "$VENV/bin/wstest" --autobahnversion >/dev/null 2>&1 || die "wstest does not start: $("$VENV/bin/wstest" --autobahnversion 2>&1 | tail -5)"
    requirements_stamp >"$VENV/.ringcast-stamp"
    log "autobahn: installed $("$VENV/bin/wstest" --autobahnversion 2>/dev/null | tr '\n' ' ')-> $VENV/bin/wstest"
}

# ---------------------------------------------------------------------------------------------
# 3. Python 3 test venv (.venv) with scripts/test-requirements.txt
# ---------------------------------------------------------------------------------------------
PY3_VENV="$ROOT/.venv"
PY3_REQUIREMENTS="$ROOT/scripts/test-requirements.txt"

install_python3_venv() {
    local stamp
    stamp="$(sha256sum "$PY3_REQUIREMENTS" | cut -d' ' -f1)"
    if [[ -x "$PY3_VENV/bin/python" && -f "$PY3_VENV/.ringcast-stamp" \
          && "$(cat "$PY3_VENV/.ringcast-stamp")" == "$stamp" ]]; then
        log "python3: $PY3_VENV is up to date"
        return
    fi
    local py3="${PYTHON3:-python3}"
    command -v "$py3" >/dev/null 2>&1 || die "no python3 found (set PYTHON3=)"
    "$py3" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' \
        || die "$py3 is older than 3.9 (websockets 15 needs 3.9+)"
    if ! "$py3" -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian splits venv's pip bootstrap into python3-venv.
        [[ "${RINGCAST_SKIP_APT:-0}" == 1 ]] && die "$py3 has no venv/ensurepip (apt-get install python3-venv)"
        local sudo=()
        [[ "$(id -u)" != 0 ]] && sudo=(sudo)
        log "apt: apt-get install -y --no-install-recommends python3-venv"
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends python3-venv \
            || { "${sudo[@]}" apt-get update -q && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends python3-venv; }
    fi
    log "python3: creating $PY3_VENV with $("$py3" -V 2>&1)"
    rm -rf "$PY3_VENV"
    "$py3" -m venv "$PY3_VENV"
    "$PY3_VENV/bin/pip" install -q -r "$PY3_REQUIREMENTS"
    "$PY3_VENV/bin/pip" check
    echo "$stamp" >"$PY3_VENV/.ringcast-stamp"
    log "python3: installed $(grep -v '^#' "$PY3_REQUIREMENTS" | tr '\n' ' ')into $PY3_VENV"
}

# ---------------------------------------------------------------------------------------------
# 4. playwright-core for the browser test
# ---------------------------------------------------------------------------------------------
BROWSER_DIR="$ROOT/tests/browser"

install_playwright() {
    command -v npm >/dev/null 2>&1 || die "npm not found (it is installed by the apt step; RINGCAST_SKIP_APT=1?)"
    local stamp="$BROWSER_DIR/node_modules/.ringcast-stamp" want
    want="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" \
          && -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ]]; then
        log "playwright-core: $BROWSER_DIR/node_modules is up to date"
        return
    fi
    log "playwright-core: npm ci in $BROWSER_DIR"
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
    log "playwright-core: installed $(node -p "require('$BROWSER_DIR/node_modules/playwright-core/package.json').version")"
}

install_apt_packages
install_autobahn
install_python3_venv
install_playwright
log "done"
