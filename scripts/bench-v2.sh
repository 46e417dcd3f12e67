#!/usr/bin/env bash
# Protocol version 2 on the datagram path: exactly-once `5:` publishes against the echo
# ceiling and the session publish, and publishing while followers hold `6:` requests.
#
#   scripts/bench-v2.sh [DURATION] [ROUNDS]      (default 10s per measurement, 3 rounds)
#
# Every measurement runs against a fresh release mboard-server process on loopback
# (`--in-memory`, or a temporary `--data-dir` with `--fsync always` for the durable rows),
# and the scenarios alternate within each round. Prints one JSON object per run on stdout
# (with "round" and "label" added), so the summary can be computed from the raw runs.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
rounds=${2:-3}
cargo build --release --quiet --bins
bin=target/release
data=$(mktemp -d "${TMPDIR:-/tmp}/mboard-bench-v2.XXXXXX")
port=${MBOARD_BENCH_PORT:-7798}
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

start_server() {
  rm -rf "$data/board"
  $bin/mboard-server --listen 127.0.0.1:$port --log-level warn "$@" &
  server_pid=$!
  # Ready when it answers.
  for _ in $(seq 50); do
    if $bin/mboard-client --server 127.0.0.1:$port --timeout 200ms ids -n 1 >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}

stop_server() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# run ROUND LABEL SERVER-ARGS -- BENCH-ARGS
run() {
  local round=$1 label=$2
  shift 2
  local server_args=()
  while [ "$1" != "--" ]; do server_args+=("$1"); shift; done
  shift
  start_server "${server_args[@]}"
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  $bin/mboard-bench --server 127.0.0.1:$port --duration "$duration" --warmup 1s --json "$@" |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(round=int(sys.argv[1]), label=sys.argv[2], load=float(sys.argv[3])); print(json.dumps(r))' \
      "$round" "$label" "$load"
  stop_server
}

mem=(--in-memory)
durable=(--data-dir "$data/board" --fsync always)
for round in $(seq "$rounds"); do
  # The order turns each round, so no scenario always runs first after a build.
  case $((round % 3)) in
    1) order=(once session publish) ;;
    2) order=(session publish once) ;;
    0) order=(publish once session) ;;
  esac
  for s in "${order[@]}"; do
    case $s in
      once) run "$round" publish-once "${mem[@]}" -- --vs-echo publish-once ;;
      session) run "$round" publish-session "${mem[@]}" -- publish-session ;;
      publish) run "$round" publish "${mem[@]}" -- publish ;;
    esac
  done
  if [ $((round % 2)) = 1 ]; then follow_order=(0 1000); else follow_order=(1000 0); fi
  for n in "${follow_order[@]}"; do
    run "$round" "follow-$n" "${mem[@]}" -- follow --followers "$n"
  done
  for n in "${follow_order[@]}"; do
    run "$round" "follow-once-$n" "${mem[@]}" -- follow --once --followers "$n"
  done
  run "$round" "follow-1000-rate-200" "${mem[@]}" -- follow --followers 1000 --rate 200
  if [ $((round % 2)) = 1 ]; then d_order=(once publish); else d_order=(publish once); fi
  for s in "${d_order[@]}"; do
    case $s in
      once) run "$round" durable-publish-once "${durable[@]}" -- publish-once ;;
      publish) run "$round" durable-publish "${durable[@]}" -- publish ;;
    esac
  done
done
