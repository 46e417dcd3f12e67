#!/usr/bin/env bash
# Start-up time and resident memory of the durable board:
#   1. one million 100-byte messages;
#   2. 2 GiB of text (128 messages of 16 MiB), then read back.
#
#   scripts/bench-startup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
bin=target/release
data=$(mktemp -d "${TMPDIR:-/tmp}/mboard-startup.XXXXXX")
port=7798
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

start() { # start DIR [ARGS...]: starts the server, waits until it serves, sets server_pid
  local dir=$1; shift
  local t0; t0=$(date +%s%N)
  $bin/mboard-server --listen 127.0.0.1:$port --data-dir "$dir" --log-level info "$@" 2>"$data/log" &
  server_pid=$!
  until grep -q "serving" "$data/log"; do sleep 0.005; done
  echo "start-up: $(( ($(date +%s%N) - t0) / 1000000 )) ms to serving; $(grep -o 'elapsed_ms=[0-9]*' "$data/log")"
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }
rss() { echo "resident memory: $(grep VmRSS /proc/"$server_pid"/status | awk '{print $2/1024}') MiB"; }
count() { # the newest id, or -1 on an empty board
  local id; id=$(MBOARD_SERVER=127.0.0.1:$port $bin/mboard-client ids -n 1)
  echo "${id:--1}"
}

echo "== one million messages of 100 bytes"
start "$data/million" --fsync never
while [ "$(count)" -lt 999999 ]; do
  $bin/mboard-bench --server 127.0.0.1:$port --clients 32 --duration 2s --warmup 0s publish --size 100 >/dev/null
done
echo "messages: $(( $(count) + 1 )), journal: $(du -h "$data/million/journal" | cut -f1)"
rss
stop
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && echo "(page cache dropped)" || echo "(page cache kept: not root)"
start "$data/million"
rss
stop

echo "== 2 GiB of text"
start "$data/big" --fsync never --max-request-size 17000000
$bin/mboard-bench --server 127.0.0.1:$port --clients 2 --duration 60s --warmup 0s upload --size 16MiB >/dev/null &
bench=$!
until [ "$(count)" -ge 127 ]; do sleep 0.2; done
kill $bench; wait $bench 2>/dev/null || true
echo "messages: $(( $(count) + 1 )), journal: $(du -h "$data/big/journal" | cut -f1)"
stop
start "$data/big"
for id in 0 50 100 127; do MBOARD_SERVER=127.0.0.1:$port $bin/mboard-client --timeout 30s get $id | wc -c; done
echo "after reading four 16 MiB messages:"
rss
stop
