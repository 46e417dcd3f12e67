#!/usr/bin/env bash
# The clustered store's figures (docs/BENCHMARKS.md), in one run on loopback:
#   JetStream's own publish rate from async-nats (R1, R3) against `5:` through mboard
#   servers on an R1 and an R3 stream; reads on a clustered server against --in-memory;
#   replication lag between two servers.
#
#   scripts/bench-cluster.sh            # CLIENTS=32 DURATION=5s ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin
clients=${CLIENTS:-32}
duration=${DURATION:-5s}
rounds=${ROUNDS:-2}

source scripts/bench-setup.sh
bench_setup cluster

source scripts/nats-cluster.sh
start_nats_cluster "$dir" 24221 26221 bench

serve() { # serve NAME PORT ARGS...: starts an mboard server and waits until it serves
    local name=$1 port=$2; shift 2
    "$bin/mboard-server" --listen "127.0.0.1:$port" --log-level warn,mboard_server=info "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    until grep -qs "serving" "$dir/$name.log"; do sleep 0.05; done
}
for i in 1 2 3; do serve "r3-$i" $((17800 + i)) --nats "$urls" --nats-stream board3 --nats-replicas 3; done
for i in 1 2 3; do serve "r1-$i" $((17810 + i)) --nats "$urls" --nats-stream board1 --nats-replicas 1; done
serve memory 17820 --in-memory
r3=127.0.0.1:17801,127.0.0.1:17802,127.0.0.1:17803
r1=127.0.0.1:17811,127.0.0.1:17812,127.0.0.1:17813

bench() { "$bin/mboard-bench" --clients "$clients" --duration "$duration" "$@"; }
echo "== publishes: $clients clients, 16-byte texts, $rounds rounds"
for round in $(seq "$rounds"); do
    echo "-- round $round"
    echo -n "R1 jetstream     "; bench jetstream --nats "$urls" --replicas 1
    echo -n "R1 mboard 5:     "; bench --server "$r1" publish-once
    echo -n "R3 jetstream     "; bench jetstream --nats "$urls" --replicas 3
    echo -n "R3 mboard 5:     "; bench --server "$r3" publish-once
done
echo "== reads on one server: clustered (R3) against --in-memory"
for round in $(seq "$rounds"); do
    echo "-- round $round"
    echo -n "clustered        "; bench --server 127.0.0.1:17801 get
    echo -n "memory           "; bench --server 127.0.0.1:17820 get
    echo -n "clustered        "; bench --server 127.0.0.1:17801 last -n 10
    echo -n "memory           "; bench --server 127.0.0.1:17820 last -n 10
done
echo "== replication lag: acknowledged on one server, woken on another (R3)"
"$bin/mboard-bench" --duration 10s --server 127.0.0.1:17801,127.0.0.1:17802 lag
