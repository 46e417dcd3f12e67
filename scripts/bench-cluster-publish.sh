#!/usr/bin/env bash
# `5:` publishes through M mboard servers on an R1 (or REPLICAS=3) stream against
# JetStream's own publishes from async-nats (mboard-bench jetstream), 32 clients each, on
# a 3-node NATS cluster on loopback; prints both reports and the CPU time (in ticks of
# 10 ms) each NATS node and each mboard server spent during the mboard run.
#
#   M=1 ONE=1 ROUNDS=2 scripts/bench-cluster-publish.sh
#
# ONE=1 gives the mboard servers and the baseline the first NATS node's URL only (else all
# three: each client picks one at random). PERF=1 records the first mboard server with
# `perf record -g` into /tmp/mboard-publish.perf.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin
cargo build --release --quiet -p mboard-server -p mboard-bench
bin=$PWD/target/release
dir=$(mktemp -d "${TMPDIR:-/tmp}/mboard-bench-publish.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
source scripts/nats-cluster.sh
start_nats_cluster "$dir" 34221 36221 publish
nats=("${pids[@]}")
[[ -n ${ONE:-} ]] && urls=${urls%%,*}
sleep 1
mboard=()
servers=
for i in $(seq "${M:-3}"); do
    "$bin/mboard-server" --listen "127.0.0.1:$((37800 + i))" --log-level warn,mboard_server=info \
        --nats "$urls" --nats-stream publish --nats-replicas "${REPLICAS:-1}" >"$dir/m$i.log" 2>&1 &
    pids+=($!)
    mboard+=($!)
    servers+="${servers:+,}127.0.0.1:$((37800 + i))"
    until grep -qs "serving" "$dir/m$i.log"; do sleep 0.05; done
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
bench() { "$bin/mboard-bench" --clients 32 --duration "${DURATION:-5s}" --json "$@"; }
for round in $(seq "${ROUNDS:-1}"); do
    echo "-- round $round"
    echo -n "jetstream  "; bench jetstream --nats "$urls" --replicas "${REPLICAS:-1}"
    declare -A before
    for p in "${nats[@]}" "${mboard[@]}"; do before[$p]=$(ticks "$p"); done
    perf=
    if [[ -n ${PERF:-} ]]; then
        perf record -F 999 -g -o /tmp/mboard-publish.perf -p "${mboard[0]}" -- sleep 4 >/dev/null 2>&1 &
        perf=$!
    fi
    echo -n "mboard 5:  "; bench --server "$servers" publish-once
    [[ -z $perf ]] || wait "$perf" || true
    echo -n "cpu ticks: nats"
    for p in "${nats[@]}"; do echo -n " $(($(ticks "$p") - before[$p]))"; done
    echo -n "; mboard"
    for p in "${mboard[@]}"; do echo -n " $(($(ticks "$p") - before[$p]))"; done
    echo
done
