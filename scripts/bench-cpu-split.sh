#!/usr/bin/env bash
# Where the CPU goes in one mboard-bench run: runs each given bench command line against a
# fresh in-memory server (or SERVER_ARGS), in turn, ROUNDS times, alternating the order, and
# prints per run the publish rate, the server's CPU seconds and the load generator's CPU
# seconds (user + system), and each per publish. On a shared two-core machine the rate is
# disturbed by other load; the CPU split says whether the server or the load generator
# spent what a scenario costs.
#
#   ROUNDS=3 DUR=5s scripts/bench-cpu-split.sh 'follow --followers 0' 'follow --followers 1000'
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} dur=${DUR:-5s} server_args=${SERVER_ARGS:---in-memory}
port=7795
cpu_of() { # user + system seconds of a process, from /proc
  python3 -c 'import os,sys; f=open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")",1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK"))' "$1"
}
one() {
  # shellcheck disable=SC2086
  target/release/mboard-server --listen 127.0.0.1:$port --log-level warn $server_args &
  local pid=$!
  sleep 0.5
  local s0 s1 load tmp
  tmp=$(mktemp /tmp/mboard-cpu-split.XXXXXX)
  load=$(cut -d' ' -f1 /proc/loadavg)
  s0=$(cpu_of $pid)
  # shellcheck disable=SC2086
  /usr/bin/time -o "$tmp.time" -f '%U %S' target/release/mboard-bench --server 127.0.0.1:$port \
    --duration "$dur" --warmup 1s --json $1 >"$tmp"
  s1=$(cpu_of $pid)
  python3 - "$1" "$load" "$s0" "$s1" "$tmp" "$port" <<'PY'
import json, socket, sys
label, load, s0, s1, path, port = sys.argv[1:]
r = json.load(open(path))
u, s = (float(x) for x in open(path + ".time").read().split()[-2:])
# The next id is how many publishes the server stored, warm-up included, as the CPU is.
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
sock.sendto(b"1:probe", ("127.0.0.1", int(port)))
n = max(int(sock.recvfrom(100)[0].decode().split(":")[1]), 1)
srv = float(s1) - float(s0)
print(f"{label:28} load {load:>5}  {r['rate']:>8,.0f} publishes/s  server {srv:5.2f} s CPU "
      f"({srv * 1e6 / n:5.1f} us/publish)  bench {u + s:5.2f} s CPU ({(u + s) * 1e6 / n:5.1f} us/publish)")
PY
  kill $pid; wait $pid 2>/dev/null || true
  rm -f "$tmp" "$tmp.time"
}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then for c in "$@"; do one "$c"; done
  else for ((i = $#; i >= 1; i--)); do one "${!i}"; done; fi
done
