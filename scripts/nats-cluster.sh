# Sourced by scripts/cluster.sh, bench-cluster.sh and bench-cluster-publish.sh: a 3-node NATS JetStream
# cluster on loopback.
#
#   start_nats_cluster DIR CLIENT_BASE ROUTE_BASE NAME
# starts nodes n1..n3 listening on CLIENT_BASE+1..3 (routes on ROUTE_BASE+1..3), each with
# its store under DIR/nI; appends their pids to `pids` and sets `urls` to their
# comma-separated URLs. max_payload is 17MB, so that 16 MiB requests fit with headers.
# Node nI carries the tag node:nI (server_tags), so that an R1 stream can be placed on it
# (`mboard-bench place`).
start_nats_cluster() {
    local dir=$1 client=$2 route=$3 name=$4 i
    local routes="\"nats-route://127.0.0.1:$((route + 1))\", \"nats-route://127.0.0.1:$((route + 2))\", \"nats-route://127.0.0.1:$((route + 3))\""
    urls=
    for i in 1 2 3; do
        mkdir -p "$dir/n$i"
        cat >"$dir/n$i/server.conf" <<CONF
server_name: n$i
server_tags: ["node:n$i"]
listen: "127.0.0.1:$((client + i))"
max_payload: 17MB
jetstream { store_dir: "$dir/n$i/js", max_memory_store: 256MB, max_file_store: 8GB }
cluster { name: $name, listen: "127.0.0.1:$((route + i))", routes: [$routes] }
CONF
        nats-server -c "$dir/n$i/server.conf" >"$dir/n$i/server.log" 2>&1 &
        pids+=($!)
        urls+="${urls:+,}nats://127.0.0.1:$((client + i))"
    done
}
