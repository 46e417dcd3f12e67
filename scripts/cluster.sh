#!/usr/bin/env bash
# A clustered board on loopback: a 3-node NATS JetStream cluster, 3 mboard servers on one
# R3 stream, and an nginx UDP load balancer in front of them. Ctrl+C stops everything.
#
#   scripts/cluster.sh                  # balancer on 127.0.0.1:7777
#   PORT=7800 scripts/cluster.sh        # another port (mboard servers on PORT+1..PORT+3)
#
# Needs nats-server, nginx and libnginx-mod-stream (Debian packages; scripts/test.sh
# installs them). Everything it writes (configs, logs, JetStream's store) is in one temp
# dir, removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-7777}
module=/usr/lib/nginx/modules/ngx_stream_module.so
for need in nats-server nginx; do
    command -v "$need" >/dev/null || [[ -x /usr/sbin/$need ]] || {
        echo "error: $need is not installed (apt-get install nats-server nginx libnginx-mod-stream)" >&2
        exit 1
    }
done
[[ -f $module ]] || { echo "error: $module is missing (apt-get install libnginx-mod-stream)" >&2; exit 1; }
PATH=$PATH:/usr/sbin

cargo build --release --quiet -p mboard-server -p mboard-client
bin=$PWD/target/release
dir=$(mktemp -d "${TMPDIR:-/tmp}/mboard-cluster.XXXXXX")
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT INT TERM

source scripts/nats-cluster.sh
start_nats_cluster "$dir" 14221 16221 mboard
echo "NATS: $urls"

servers=()
for i in 1 2 3; do
    addr=127.0.0.1:$((port + i))
    "$bin/mboard-server" --listen "$addr" --nats "$urls" --nats-replicas 3 \
        --metrics "127.0.0.1:$((9470 + i))" >"$dir/mboard$i.log" 2>&1 &
    pids+=($!)
    servers+=("$addr")
done
for i in 1 2 3; do
    until grep -qs "serving" "$dir/mboard$i.log"; do
        if ! kill -0 "${pids[$((2 + i))]}" 2>/dev/null; then
            echo "error: mboard server $i did not start:" >&2
            tail -3 "$dir/mboard$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done
echo "mboard servers: ${servers[*]} (metrics on 127.0.0.1:9471-9473)"

{
    echo "load_module $module;"
    echo "daemon off; worker_processes 1; pid $dir/nginx.pid; error_log $dir/nginx.log warn;"
    echo "events { worker_connections 1024; }"
    echo "stream {"
    echo "  upstream mboard {"
    echo "    hash \$remote_addr\$remote_port consistent;"
    for s in "${servers[@]}"; do echo "    server $s;"; done
    echo "  }"
    echo "  server { listen 127.0.0.1:$port udp; proxy_pass mboard; proxy_timeout 30s; }"
    echo "}"
} >"$dir/nginx.conf"
nginx -p "$dir" -e "$dir/nginx.log" -c "$dir/nginx.conf" &
pids+=($!)
until [[ -f $dir/nginx.pid ]]; do sleep 0.05; done

list=$(IFS=,; echo "${servers[*]}")
cat <<TEXT
nginx UDP balancer: 127.0.0.1:$port  (logs and configs in $dir)

Point the CLI at the balancer:
  $bin/mboard-client --server 127.0.0.1:$port publish hello
  $bin/mboard-client --server 127.0.0.1:$port last
or at the servers themselves, moving on when one does not answer:
  MBOARD_SERVER=$list $bin/mboard-client publish hello

Ctrl+C stops everything.
TEXT
wait
