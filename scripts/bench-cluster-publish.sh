#!/usr/bin/env bash
# `5:` publishes through mboard servers against JetStream's own publishes from async-nats
# (`mboard-bench jetstream`), with the placement controlled: every stream (the baseline's
# and each mboard board's) is led by NATS node n1, and in each pair the baseline's
# connection and the mboard servers' go to the same node — n1 ("local": the leader's node)
# or n2 ("route": every publish crosses a route to the leader). R1 and R3, in alternating
# rounds (the baseline first in odd rounds, mboard first in even ones), 32 clients each,
# 16-byte texts; the ratio mboard / JetStream within each round, and the median.
#
#   scripts/bench-cluster-publish.sh    # ROUNDS=3 DURATION=5s M=1 REPLICAS="1 3" PLACES="local route"
#
# Each (replicas, place) pair has M mboard servers on a board stream of its own (so that
# idle servers receive nothing), created by `mboard-bench place` before they start; a
# server whose replica's consumer JetStream put on another node than the leader is
# restarted until it is on the leader. Around every measurement it prints which node
# leads each stream (and its consumers) and which node each connection goes to, and
# stops, non-zero with one line, if that is not as intended. It also prints the CPU ticks
# (10 ms) each NATS node (and, in the mboard runs, each mboard server) spent in the run.
# BASE_CONSUMER=1 also starts an idle mboard server on each baseline stream, so that
# JetStream delivers every baseline publish to one ordered consumer too, as it does every
# `5:` to each mboard server's replica: the ratio then leaves out that cost of the design.
# PIN=1 puts the NATS nodes on CPU 0 and everything else on CPU 1 (taskset).
# SERVER_ENV="VAR=value ..." sets environment variables for the mboard servers only (say
# MBOARD_IO_BATCH=1, or TOKIO_WORKER_THREADS=1).
# PERF=1 records the first mboard server of the first pair with `perf record -g` into
# /tmp/mboard-publish.perf during its first run.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0
rounds=${ROUNDS:-3}
m=${M:-1}
replicas_list=${REPLICAS:-1 3}
places=${PLACES:-local route}
source scripts/bench-setup.sh
bench_setup publish

client_base=34221
source scripts/nats-cluster.sh
start_nats_cluster "$dir" "$client_base" 36221 publish
nats=("${pids[@]}")
# PIN=1: the NATS nodes on CPU 0, the mboard servers and the load generator on CPU 1, as if
# NATS had a machine of its own (both sides of every pair alike).
pin_others=()
if [[ -n ${PIN:-} ]]; then
    for pid in "${nats[@]}"; do taskset -apc 0 "$pid" >/dev/null; done
    pin_others=(taskset -c 1)
fi
for i in 1 2 3; do
    until grep -qs "Server is ready" "$dir/n$i/server.log"; do
        kill -0 "${nats[$((i - 1))]}" 2>/dev/null || fail "NATS node n$i did not start: $(tail -1 "$dir/n$i/server.log")"
        sleep 0.05
    done
done
url() { echo "nats://127.0.0.1:$((client_base + ${1#n}))"; }
leader=n1
node_for() { case $1 in local) echo n1 ;; route) echo n2 ;; *) fail "PLACES takes local and route, not $1" ;; esac; }

# The NATS node a process's established TCP connections go to: exactly one, or it fails.
node_of() {
    local ports port
    ports=$(ss -Htnp state established | awk -v pid="pid=$1," 'index($0, pid) { n = split($4, a, ":"); print a[n] }' | sort -u)
    [[ $(wc -w <<<"$ports") == 1 ]] || fail "mboard server $1 has NATS connections to ports [${ports//$'\n'/ }], not one"
    port=$ports
    ((port > client_base && port <= client_base + 3)) || fail "mboard server $1 is connected to port $port, no NATS node of this run"
    echo "n$((port - client_base))"
}

place() { "$bin/mboard-bench" place --nats "$(url "$leader")" --leader "$leader" "$@"; }
for r in $replicas_list; do
    echo -n "placed: "; place --stream "base-r$r" --replicas "$r"
done
# "NAME NODE" for each consumer of a stream.
consumers_of() { place --stream "$1" --check | grep -o '[^ ,]* on n[0-9]' | sed 's/ on / /' || true; }
wait_consumers() { # wait_consumers STREAM N: until the stream has N consumers
    local deadline=$((SECONDS + 60))
    until [[ $(consumers_of "$1" | wc -l) == "$2" ]]; do
        ((SECONDS < deadline)) || fail "stream $1 does not have $2 consumers after 60 s: $(consumers_of "$1" | tr '\n' ' ')"
        sleep 0.2
    done
}
declare -A servers mboard
# start_server R PLACE VIA PORT N: the pair's Nth mboard server. Its consumer lands on any
# replica of an R3 stream: it is restarted until the consumer is on the leader's node.
start_server() {
    local r=$1 p=$2 via=$3 port=$4 n=$5 stream=${6:-board-r$1-$2} attempt pid elsewhere
    for attempt in $(seq 20); do
        env ${SERVER_ENV:-} "${pin_others[@]}" "$bin/mboard-server" --listen "127.0.0.1:$port" --log-level warn,mboard_server=info \
            --nats "$(url "$via")" --nats-stream "$stream" --nats-replicas "$r" >"$dir/m$port.log" 2>&1 &
        pid=$!
        pids+=("$pid")
        until grep -qs "serving" "$dir/m$port.log"; do
            kill -0 "$pid" 2>/dev/null || fail "mboard server on $port did not start: $(tail -1 "$dir/m$port.log")"
            sleep 0.05
        done
        wait_consumers "$stream" "$n"
        elsewhere=$(consumers_of "$stream" | awk -v l="$leader" '$2 != l { print $2 }')
        if [[ -z $elsewhere ]]; then
            mboard[$r-$p]+="${mboard[$r-$p]:+ }$pid"
            servers[$r-$p]+="${servers[$r-$p]:+,}127.0.0.1:$port"
            return
        fi
        echo "started: mboard server $pid on $stream has its consumer on $elsewhere, not $leader: restarting it"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        wait_consumers "$stream" $((n - 1))
    done
    fail "the consumer of an mboard server on $stream is not on $leader after 20 starts"
}
port=37800
for r in $replicas_list; do
    for p in $places; do
        via=$(node_for "$p")
        echo -n "placed: "; place --stream "board-r$r-$p" --replicas "$r"
        for i in $(seq "$m"); do
            port=$((port + 1))
            start_server "$r" "$p" "$via" "$port" "$i"
        done
        echo -n "started: "; place --stream "board-r$r-$p" --check --consumers "$m"
    done
done
if [[ -n ${BASE_CONSUMER:-} ]]; then
    # An idle mboard server on each baseline stream: its replica's consumer receives every
    # baseline publish, as each mboard server's own replica receives the board's.
    for r in $replicas_list; do
        port=$((port + 1))
        start_server "$r" base "$leader" "$port" 1 "base-r$r"
        echo -n "started: "; place --stream "base-r$r" --check --consumers 1
    done
fi

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
start_ticks() { local n; for n in "${nats[@]}" "$@"; do before[$n]=$(ticks "$n"); done; }
print_ticks() { # print_ticks [MBOARD_PID...]
    local n
    echo -n "    cpu ticks: n1..n3"
    for n in "${nats[@]}"; do echo -n " $(($(ticks "$n") - before[$n]))"; done
    (($#)) && echo -n "; mboard"
    for n in "$@"; do echo -n " $(($(ticks "$n") - before[$n]))"; done
    echo
}
bench() { "${pin_others[@]}" "$bin/mboard-bench" --clients 32 --duration "${DURATION:-5s}" --json "$@"; }
rate() { jq -r .rate <<<"$1"; }

baseline() { # baseline R VIA: prints the report's JSON last
    local out
    start_ticks
    out=$(bench jetstream --nats "$(url "$2")" --stream "base-r$1" --leader "$leader" --via "$2" 2>"$dir/err") \
        || { sed 's/^/    /' "$dir/err" >&2; exit 1; }
    sed 's/^/    /' "$dir/err" >&2
    echo "    jetstream  $out" >&2
    print_ticks >&2
    echo "$out"
}
perf_done=
through_mboard() { # through_mboard R PLACE VIA: prints the report's JSON last
    local r=$1 p=$2 via=$3 pid node out perf=
    for pid in ${mboard[$r-$p]}; do
        node=$(node_of "$pid")
        [[ $node == "$via" ]] || fail "refusing to measure: mboard server $pid is connected to $node, not to $via"
        echo "    mboard server $pid connected to $node" >&2
    done
    echo -n "    mboard before: " >&2; place --stream "board-r$r-$p" --check --consumers "$m" >&2
    if [[ -n ${PERF:-} && -z $perf_done ]]; then
        perf record -F 999 -g -o /tmp/mboard-publish.perf -p "${mboard[$r-$p]%% *}" -- sleep 4 >/dev/null 2>&1 &
        perf=$!
        perf_done=1
    fi
    # shellcheck disable=SC2086 # the pair's pids, one word each
    start_ticks ${mboard[$r-$p]}
    out=$(bench --server "${servers[$r-$p]}" publish-once)
    # shellcheck disable=SC2086
    print_ticks ${mboard[$r-$p]} >&2
    [[ -z $perf ]] || wait "$perf" || true
    echo "    mboard 5:  $out" >&2
    echo -n "    mboard after: " >&2; place --stream "board-r$r-$p" --check --consumers "$m" >&2
    for pid in ${mboard[$r-$p]}; do
        node=$(node_of "$pid")
        [[ $node == "$via" ]] || fail "mboard server $pid moved to $node during the run, not $via"
    done
    echo "$out"
}

declare -A ratios
echo "load: $(uptime)"
for round in $(seq "$rounds"); do
    echo "-- round $round ($(uptime | sed 's/.*load/load/'))"
    for r in $replicas_list; do
        for p in $places; do
            via=$(node_for "$p")
            echo "  R$r $p: stream leaders on $leader, connections to $via"
            if ((round % 2)); then
                js=$(baseline "$r" "$via")
                mb=$(through_mboard "$r" "$p" "$via")
            else
                mb=$(through_mboard "$r" "$p" "$via")
                js=$(baseline "$r" "$via")
            fi
            ratio=$(awk -v a="$(rate "$mb")" -v b="$(rate "$js")" 'BEGIN { printf "%.2f", a / b }')
            printf '  R%s %s: mboard %.0f/s / jetstream %.0f/s = %s\n' "$r" "$p" "$(rate "$mb")" "$(rate "$js")" "$ratio"
            ratios[$r-$p]+="${ratios[$r-$p]:+ }$ratio"
        done
    done
done
echo "load: $(uptime)"
echo "== mboard / jetstream per round, and the median"
for r in $replicas_list; do
    for p in $places; do
        median=$(tr ' ' '\n' <<<"${ratios[$r-$p]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        echo "R$r $p: ${ratios[$r-$p]}  median $median"
    done
done
