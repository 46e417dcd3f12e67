#!/usr/bin/env bash
# Alternating A/B runs of `mboard-bench publish` against two server configurations, each
# started afresh (a new data directory) for every run, and the ratio of B to A.
#
#   scripts/bench-ab.sh ROUNDS DURATION 'A server args' 'B server args' [bench args]
#
# Server args may name another binary first (`bin=/path/to/mboard-server`), e.g. a build of
# the same commit with one change for comparison. `{data}` stands for the run's (fresh)
# data directory. Bench args default to `publish --size 100` with 32 clients.
#
#   scripts/bench-ab.sh 5 10s '--data-dir {data}' '--data-dir {data} --retain-messages 50000'
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1 duration=$2 a=$3 b=$4
shift 4
bench=("$@")
[ ${#bench[@]} -gt 0 ] || bench=(--clients 32 publish --size 100)
cargo build --release --quiet --bins
data=$(mktemp -d "${TMPDIR:-/tmp}/mboard-ab.XXXXXX")
port=7796
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

run() { # run LABEL ARGS: one measurement; prints "LABEL rate p50 p99"
  local label=$1 args=$2 bin=target/release/mboard-server
  rm -rf "$data/board"
  args=${args//\{data\}/$data/board}
  if [[ $args == bin=* ]]; then
    bin=${args%% *}
    bin=${bin#bin=}
    args=${args#* }
  fi
  # shellcheck disable=SC2086
  $bin --listen 127.0.0.1:$port --log-level warn $args &
  server_pid=$!
  sleep 0.5
  local json
  json=$(target/release/mboard-bench --server 127.0.0.1:$port --duration "$duration" --warmup 1s --json "${bench[@]}")
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); print(sys.argv[1], round(r["rate"]), r["p50_us"], r["p99_us"])' "$label" "$json"
}

results=()
for i in $(seq "$rounds"); do
  results+=("$(run A "$a")")
  results+=("$(run B "$b")")
done
printf '%s\n' "${results[@]}"
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
a = [float(r[1]) for r in rows if r[0] == "A"]
b = [float(r[1]) for r in rows if r[0] == "B"]
pairs = [y / x for x, y in zip(a, b)]
print(f"median A {statistics.median(a):.0f}/s, median B {statistics.median(b):.0f}/s; B/A per round {[round(p, 3) for p in pairs]}, median {statistics.median(pairs):.3f}")
'
