#!/usr/bin/env bash
# Publish throughput and latency for each store, at 1 and 32 publishers, in one run.
#
#   scripts/bench-durability.sh [DURATION]      (default 10s per measurement)
#
# Starts a release mboard-server per store on loopback (a temporary data directory for the
# journal), runs `mboard-bench publish` against it, stops it, and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
cargo build --release --quiet --bins
bin=target/release
data=$(mktemp -d "${TMPDIR:-/tmp}/mboard-bench.XXXXXX")
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

port=7797
printf '%-22s %8s %12s %10s %10s %10s\n' store clients "publishes/s" "p50 us" "p99 us" "p99.9 us"
for store in "--in-memory" "--fsync never" "--fsync always"; do
  rm -rf "$data/board"
  args=($store)
  [ "$store" = "--in-memory" ] || args+=(--data-dir "$data/board")
  $bin/mboard-server --listen 127.0.0.1:$port "${args[@]}" --log-level warn &
  server_pid=$!
  sleep 0.5
  for clients in 1 32; do
    json=$($bin/mboard-bench --server 127.0.0.1:$port --clients $clients --duration "$duration" --warmup 1s --json publish --size 100)
    python3 - "$store" "$clients" "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[3])
print(f"{sys.argv[1]:<22} {sys.argv[2]:>8} {r['rate']:>12.0f} {r['p50_us']:>10.1f} {r['p99_us']:>10.1f} {r['p999_us']:>10.1f}")
PY
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
done
