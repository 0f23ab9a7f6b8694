#!/usr/bin/env bash
# Smoke run of every load-test scenario at tiny sizes against a running
# Switchboard server, so that the tool cannot rot. Not a benchmark.
#
# Environment:
#   LOADTEST_TARGET          server URL, a loopback address (e.g. http://127.0.0.1:18090)
#   LOADTEST_ADMIN_USER      administrator user name
#   LOADTEST_ADMIN_PASSWORD  administrator password
#   LOADTEST_SERVER_PID      optional: the server's pid (memory and CPU are reported)
#   LOADTEST_BIN             optional: the switchboard-loadtest binary to run;
#                            by default it is built with cargo (debug profile)
#
# The server must run with its rate limit raised
# (SWITCHBOARD_RATE_PER_SEC=1000000 SWITCHBOARD_RATE_BURST=1000000).
# Exits non-zero on the first failing scenario.
set -euo pipefail

: "${LOADTEST_TARGET:?set LOADTEST_TARGET to the server URL}"
: "${LOADTEST_ADMIN_USER:?set LOADTEST_ADMIN_USER}"
: "${LOADTEST_ADMIN_PASSWORD:?set LOADTEST_ADMIN_PASSWORD}"
export LOADTEST_TARGET LOADTEST_ADMIN_USER LOADTEST_ADMIN_PASSWORD

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${LOADTEST_BIN:-}" ]]; then
    (cd "$here/.." && cargo build -q -p switchboard-loadtest)
    LOADTEST_BIN="${CARGO_TARGET_DIR:-$here/../target}/debug/switchboard-loadtest"
fi

pid_args=()
if [[ -n "${LOADTEST_SERVER_PID:-}" ]]; then
    pid_args=(--server-pid "$LOADTEST_SERVER_PID")
fi

# Every run is bounded: tiny sizes, and a wall-clock limit per scenario.
limit=120

run() {
    echo "--- smoke: $*"
    if ! timeout "$limit" "$LOADTEST_BIN" "$@" "${pid_args[@]}"; then
        echo "smoke: FAILED: $*" >&2
        exit 1
    fi
}

run connections --count 20
run group --members 20 --messages 20
run group --members 20 --messages 20 --rate 200
run group --members 20 --messages 20 --baseline --compare
run connections --count 20 --baseline
run chat --pairs 4 --rate 5 --duration-s 2
run storm --clients 20 --rounds 2

# The JSON form: one object on stdout that says ok.
echo "--- smoke: group --json"
json="$(timeout "$limit" "$LOADTEST_BIN" group --members 5 --messages 5 --json "${pid_args[@]}" 2>/dev/null)" || {
    echo "smoke: FAILED: group --json" >&2
    exit 1
}
if [[ "$json" != \{*\"ok\":true* ]]; then
    echo "smoke: FAILED: group --json printed: $json" >&2
    exit 1
fi

# A non-loopback target must be refused before any traffic.
echo "--- smoke: non-loopback target refused"
if "$LOADTEST_BIN" connections --count 1 --target http://192.0.2.1:8080 2>/dev/null; then
    echo "smoke: FAILED: a non-loopback target was accepted" >&2
    exit 1
fi

echo "--- smoke: dispatch"
if ! timeout "$limit" "$LOADTEST_BIN" dispatch --agents 2 --consults 5 "${pid_args[@]}"; then
    echo "smoke: FAILED: dispatch" >&2
    exit 1
fi

echo "--- smoke: dispatch --backlog"
if ! timeout "$limit" "$LOADTEST_BIN" dispatch --backlog --agents 2 --consults 7 "${pid_args[@]}"; then
    echo "smoke: FAILED: dispatch --backlog" >&2
    exit 1
fi

echo "smoke: all scenarios passed"
