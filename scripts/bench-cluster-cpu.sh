#!/usr/bin/env bash
# Where the CPU of a `5:` goes on the clustered store: one NATS node (JetStream, no
# cluster), one mboard server on it, and in alternating runs JetStream's own publishes from
# async-nats (`mboard-bench jetstream`) and `5:` through the server (`mboard-bench
# publish-once`), 32 clients each. For every run it prints the rate and the CPU per
# operation of each process: the NATS node, the mboard server, the load generator.
#
#   scripts/bench-cluster-cpu.sh                   # ROUNDS=3 DURATION=5s
#   SERVERS="/tmp/a /tmp/b" scripts/bench-cluster-cpu.sh
#
# SERVERS names directories holding an mboard-server binary each, to compare builds A/B:
# every round runs the baseline, then each of them (one server at a time, on a fresh
# stream each). Default: this tree's release build. SERVER_ARGS and SERVER_ENV are passed
# to the servers (say SERVER_ARGS="--workers 1", SERVER_ENV=TOKIO_WORKER_THREADS=1).
# IDLE=1 starts a second, idle mboard server on each board: its CPU per operation is what
# feeding a replica costs.
# RELAY=1 adds, each round, `5:` through the bare relay (`mboard-bench relay`: a datagram
# in, a publish, its acknowledgement, a datagram out, nothing else) without a feed and
# with one (an ordered push consumer drained as a replica's): the floor of any server of
# this protocol on async-nats. RELAY="none push pull" names the feeds to run (pull: a
# pull consumer fetched in batches). Its CPU shows in the server column.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin
rounds=${ROUNDS:-3}
duration=${DURATION:-5s}
source scripts/bench-setup.sh
command -v nats-server >/dev/null || fail "nats-server is not installed (apt-get install nats-server)"
bench_setup cpu
bench=$bin/mboard-bench
servers=${SERVERS:-$bin}

nats_port=34999
cat >"$dir/nats.conf" <<CONF
listen: "127.0.0.1:$nats_port"
max_payload: 17MB
jetstream { store_dir: "$dir/js", max_memory_store: 256MB, max_file_store: 8GB }
CONF
nats-server -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 &
nats=$!
pids+=("$nats")
until grep -qs "Server is ready" "$dir/nats.log"; do
    kill -0 "$nats" 2>/dev/null || fail "NATS did not start: $(tail -1 "$dir/nats.log")"
    sleep 0.05
done
url=nats://127.0.0.1:$nats_port

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# ready PID LOG MARK WHAT: waits until LOG says MARK, and prints PID; fails if it exits first.
ready() {
    pids+=("$1")
    until grep -qs "$3" "$2"; do
        kill -0 "$1" 2>/dev/null || fail "$4 did not start: $(tail -1 "$2")"
        sleep 0.05
    done
    echo "$1"
}
# start_relay PORT [--feed FEED]: the bare relay on its own stream; prints its pid.
start_relay() {
    "$bench" relay --listen "127.0.0.1:$1" --nats "$url" "${@:2}" >"$dir/r$1.log" 2>&1 &
    ready $! "$dir/r$1.log" relaying "the relay on $1"
}
# start_server BIN_DIR PORT STREAM: an mboard server on the stream; prints its pid.
start_server() {
    # shellcheck disable=SC2086 # words of their own
    env ${SERVER_ENV:-} "$1/mboard-server" --listen "127.0.0.1:$2" --log-level warn,mboard_server=info \
        --nats "$url" --nats-stream "$3" ${SERVER_ARGS:-} >"$dir/m$2.log" 2>&1 &
    ready $! "$dir/m$2.log" serving "mboard server on $2"
}
# measure LABEL SERVER_PID IDLE_PID -- BENCH_ARGS...: one run, one line (- for no pid).
measure() {
    local label=$1 server=$2 idle=$3 n0 s0=0 i0=0 out ops rate
    shift 4
    n0=$(ticks "$nats")
    [[ $server == - ]] || s0=$(ticks "$server")
    [[ $idle == - ]] || i0=$(ticks "$idle")
    out=$(/usr/bin/time -f "%U %S" -o "$dir/time" "$bench" --clients 32 --duration "$duration" --json "$@" 2>"$dir/err") \
        || { cat "$dir/err" >&2; fail "$label: the load generator failed"; }
    local n=$(($(ticks "$nats") - n0)) s=0 i=0
    [[ $server == - ]] || s=$(($(ticks "$server") - s0))
    [[ $idle == - ]] || i=$(($(ticks "$idle") - i0))
    ops=$(jq -r .operations <<<"$out")
    rate=$(jq -r .rate <<<"$out")
    awk -v l="$label" -v r="$rate" -v o="$ops" -v n="$n" -v s="$s" -v i="$i" -v t="$(cat "$dir/time")" -v idle="$idle" 'BEGIN {
        split(t, b, " "); us = 10000 / o
        printf "  %-28s %8.0f/s   µs per operation: nats %5.1f  server %5.1f  load generator %5.1f", l, r, n * us, s * us, (b[1] + b[2]) * 100 * us
        if (idle != "-") printf "  idle server %5.1f", i * us
        printf "\n"
    }'
}

port=37900
for round in $(seq "$rounds"); do
    echo "-- round $round ($(uptime | sed 's/.*load/load/'))"
    measure "jetstream (async-nats)" - - -- jetstream --nats "$url"
    for s in $servers; do
        port=$((port + 2))
        server=$(start_server "$s" "$port" "cpu$port")
        idle=-
        [[ -z ${IDLE:-} ]] || idle=$(start_server "$s" $((port + 1)) "cpu$port")
        sleep 1
        measure "5: via $s" "$server" "$idle" -- --server "127.0.0.1:$port" publish-once
        kill "$server" 2>/dev/null || true
        [[ $idle == - ]] || kill "$idle" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    done
    feeds=${RELAY:-}
    [[ $feeds != 1 ]] || feeds="none push"
    for feed in $feeds; do
        port=$((port + 2))
        if [[ $feed == none ]]; then
            server=$(start_relay "$port")
        else
            server=$(start_relay "$port" --feed "$feed")
        fi
        sleep 1
        measure "5: via the relay, feed $feed" "$server" - -- --server "127.0.0.1:$port" publish-once
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    done
done
