#!/usr/bin/env bash
# A/B of two mboard-server builds under one load generator, in-memory board, 32 clients.
# Each round runs every scenario on both builds back to back, in ABBA order across rounds,
# so that a change of load on the machine hits both sides of a pair; prints after/before.
#
#   scripts/ab-servers.sh OLD/mboard-server NEW/mboard-server OLD/mboard-bench
#   ROUNDS=6 DUR=3s SCENARIOS="get publish last" scripts/ab-servers.sh …
set -euo pipefail
before=$1 after=$2 bench=$3
rounds=${ROUNDS:-6} dur=${DUR:-3s} scenarios=${SCENARIOS:-get publish last}
one() {
  local server=$1 scenario=$2 port=$((17100 + RANDOM % 800))
  "$server" --in-memory --listen 127.0.0.1:$port --log-level error &
  local pid=$!
  sleep 0.3
  "$bench" --server 127.0.0.1:$port --duration "$dur" --warmup 1s --json "$scenario" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["rate"])'
  kill $pid
  wait $pid 2>/dev/null || true
}
for r in $(seq 1 "$rounds"); do
  for s in $scenarios; do
    if [ $((r % 2)) -eq 1 ]; then a=$(one "$before" "$s"); b=$(one "$after" "$s")
    else b=$(one "$after" "$s"); a=$(one "$before" "$s"); fi
    echo "$r $s before=$a after=$b ratio=$(python3 -c "print(round($b/$a,3))")"
  done
done
