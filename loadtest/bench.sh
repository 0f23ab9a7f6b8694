#!/usr/bin/env bash
# The measurements of docs/performance.md, reproducibly: each figure comes
# from a freshly started release server on loopback, and the baseline runs in
# the same invocation as the Switchboard run it is compared with.
#
#   loadtest/bench.sh [name ...]     (default: all; names listed below)
#   BENCH_SERVER=/path/to/switchboard loadtest/bench.sh …   (another server build, e.g. to compare)
#   BENCH_RUST_LOG=warn,sqlx::query=debug loadtest/bench.sh …   (the servers' log filter; default warn)
#
# The servers' logs go to target/bench/server-a.log and server-b.log (the
# second node), and their /metrics after each run to <name>.metrics-a/-b.
# Needs release builds (`cargo build --release -p switchboard-server -p
# switchboard-loadtest`); PostgreSQL and Redis for the *_pg runs (the same
# ones scripts/test uses). Results go to target/bench/<name>.json and .txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
bin="$root/target/release"
out="$root/target/bench"
server="${BENCH_SERVER:-$bin/switchboard}"
mkdir -p "$out"
port=18190
admin_pw=admin-password
pg_admin="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"

# Many connections need many descriptors, on both sides of loopback: raise the
# soft limit as far as the hard limit allows (100k connections need a hard
# limit above 100k for the server and for this tool, see docs/performance.md).
ulimit -n "$(ulimit -Hn)"

server_pid=""
second_pid=""
bench_db=""
bench_data=""
stop_server() {
    if [[ -n "$second_pid" ]]; then
        kill -TERM "$second_pid" 2>/dev/null || true
        wait "$second_pid" 2>/dev/null || true
        second_pid=""
    fi
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
    # A _pg run's database and Redis keys go with its servers.
    if [[ -n "$bench_db" ]]; then
        psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $bench_db" >/dev/null 2>&1 || true
        redis-cli --scan --pattern "$bench_db:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
        bench_db=""
    fi
    if [[ -n "$bench_data" ]]; then
        rm -rf "$bench_data"
        bench_data=""
    fi
}
trap stop_server EXIT

# start_server sqlite|pg : a fresh database, an admin, a server with the rate
# limit raised (load generators send far above the per-connection default).
start_server() {
    stop_server
    local data
    data="$(mktemp -d /tmp/sb-bench.XXXXXX)"
    bench_data="$data"
    export SWITCHBOARD_DATA_DIR="$data" SWITCHBOARD_ADDR="127.0.0.1:$port"
    export SWITCHBOARD_RATE_PER_SEC=1000000 SWITCHBOARD_RATE_BURST=1000000
    export RUST_LOG="${BENCH_RUST_LOG:-warn}"
    unset DATABASE_URL REDIS_URL
    if [[ "$1" == pg ]]; then
        local db="sbbench_$$_$RANDOM"
        psql "$pg_admin" -qc "CREATE DATABASE $db" >/dev/null
        bench_db="$db"
        export DATABASE_URL="${pg_admin%/*}/$db" REDIS_URL="redis://127.0.0.1:6379"
        export SWITCHBOARD_REDIS_PREFIX="$db"
    fi
    "$server" user create --username admin --password "$admin_pw" --role admin >/dev/null
    "$server" >>"$out/server-a.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server did not start" >&2
    exit 1
}

# start_second : a second node of the running server's cluster (same
# database and Redis), on the next port.
start_second() {
    SWITCHBOARD_ADDR="127.0.0.1:$((port + 1))" "$server" >>"$out/server-b.log" 2>&1 &
    second_pid=$!
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$((port + 1))/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "second node did not start" >&2
    exit 1
}

lt() {
    local name="$1"
    shift
    echo "=== $name: switchboard-loadtest $*" | tee "$out/$name.txt"
    LOADTEST_TARGET="http://127.0.0.1:$port" LOADTEST_ADMIN_USER=admin LOADTEST_ADMIN_PASSWORD="$admin_pw" \
        "$bin/switchboard-loadtest" "$@" --server-pid "$server_pid" | tee -a "$out/$name.txt" ||
        echo "=== $name: the run reported a failure (see above)" | tee -a "$out/$name.txt"
    curl -fs "http://127.0.0.1:$port/metrics" >"$out/$name.metrics-a" 2>/dev/null || true
    if [[ -n "$second_pid" ]]; then
        curl -fs "http://127.0.0.1:$((port + 1))/metrics" >"$out/$name.metrics-b" 2>/dev/null || true
    fi
}

sources=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5

bench_fanout_5000() { start_server sqlite; lt fanout_5000 group --members 5000 --messages 200 --baseline --compare; }
bench_fanout_1000() { start_server sqlite; lt fanout_1000 group --members 1000 --messages 1000 --baseline --compare; }
bench_fanout_100() { start_server sqlite; lt fanout_100 group --members 100 --messages 800 --baseline --compare; }
bench_paced_1000() { start_server sqlite; lt paced_1000 group --members 1000 --messages 400 --rate 20; }
bench_idle_1k() { start_server sqlite; lt idle_1k connections --count 1000 --baseline --compare; }
bench_idle_10k() { start_server sqlite; lt idle_10k connections --count 10000 --source-ips "$sources" --baseline --compare; }
bench_idle_10k_pg() { start_server pg; lt idle_10k_pg connections --count 10000 --source-ips "$sources"; }
bench_idle_19k() { start_server sqlite; lt idle_19k connections --count 19000 --source-ips "$sources" --hold-s 5; }
bench_chat_sqlite_10k() { start_server sqlite; lt chat_sqlite_10k chat --pairs 100 --rate 50 --duration-s 10; }
bench_chat_pg_10k() { start_server pg; lt chat_pg_10k chat --pairs 100 --rate 50 --duration-s 10; }
bench_chat_sqlite() { start_server sqlite; lt chat_sqlite chat --pairs 200 --rate 100 --duration-s 10; }
bench_chat_pg() { start_server pg; lt chat_pg chat --pairs 200 --rate 100 --duration-s 10; }
bench_dispatch_sqlite() { start_server sqlite; lt dispatch_sqlite dispatch --agents 10 --consults 5000; }
bench_dispatch_pg2() {
    start_server pg
    start_second
    lt dispatch_pg2 dispatch --agents 10 --consults 5000 --second-target "http://127.0.0.1:$((port + 1))"
}
bench_dispatch_backlog_sqlite() { start_server sqlite; lt dispatch_backlog_sqlite dispatch --backlog --agents 100 --consults 10001; }
bench_dispatch_backlog_pg2() {
    start_server pg
    start_second
    lt dispatch_backlog_pg2 dispatch --backlog --agents 100 --consults 10001 --second-target "http://127.0.0.1:$((port + 1))"
}
# A small backlog drain for looking at what it does (not in docs/performance.md).
bench_dispatch_backlog_pg2_small() {
    start_server pg
    start_second
    lt dispatch_backlog_pg2_small dispatch --backlog --agents 20 --consults 2001 --second-target "http://127.0.0.1:$((port + 1))"
}
bench_storm() { start_server sqlite; lt storm storm --clients 1000 --rounds 3 --hold-ms 0; }

all=(fanout_5000 fanout_1000 fanout_100 paced_1000 idle_1k idle_10k idle_10k_pg idle_19k chat_sqlite_10k chat_pg_10k chat_sqlite chat_pg storm dispatch_sqlite dispatch_pg2 dispatch_backlog_sqlite dispatch_backlog_pg2)
for name in "${@:-${all[@]}}"; do
    "bench_$name"
done
stop_server
