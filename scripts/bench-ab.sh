#!/usr/bin/env bash
# Alternating A/B runs of `mboard-bench publish` against two server configurations, each
# started afresh (a new data directory) for every run, and the ratio of B to A: of the
# publishes per second, and of the server's CPU time per publish (user + system, from
# /proc, over the whole run), which other load on the machine disturbs far less.
#
#   scripts/bench-ab.sh ROUNDS DURATION 'A server args' 'B server args' [bench args]
#
# Server args may name another binary first (`bin=/path/to/mboard-server`), e.g. a build of
# the same commit with one change for comparison. `{data}` stands for the run's (fresh)
# data directory. Bench args default to `publish --size 100` with 32 clients.
#
#   scripts/bench-ab.sh 5 10s '--data-dir {data}' '--data-dir {data} --retain-messages 50000'
#
# AB_PORT=N serves on another port than 7796 (a run that cannot bind it measures nothing).
#
# AB_JOURNAL=1 (journal configurations only) also serves metrics on AB_PORT+1 and reads the
# writer's counters after the warm-up and at the end, adding three columns: the mean
# fsync, the writer's time per group commit outside the fsync (its own work: write,
# checks, indexing, trimming, answers) and publishes per commit. Under `--fsync always`
# the rate follows the disk's fsync time, which a shared virtual disk varies two- or
# threefold between runs; the time outside it is what a configuration adds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1 duration=$2 a=$3 b=$4
shift 4
bench=("$@")
[ ${#bench[@]} -gt 0 ] || bench=(--clients 32 publish --size 100)
cargo build --release --quiet --bins
data=$(mktemp -d "${TMPDIR:-/tmp}/mboard-ab.XXXXXX")
port=${AB_PORT:-7796}  # another engineer's run may hold the default
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

run() { # run LABEL ARGS: one measurement; prints "LABEL rate p50 p99 cpu_us_per_publish"
  local label=$1 args=$2 bin=target/release/mboard-server
  rm -rf "$data/board"
  args=${args//\{data\}/$data/board}
  if [[ $args == bin=* ]]; then
    bin=${args%% *}
    bin=${bin#bin=}
    args=${args#* }
  fi
  local metrics=() m0= m1=
  [ -z "${AB_JOURNAL:-}" ] || metrics=(--metrics "127.0.0.1:$((port + 1))")
  # shellcheck disable=SC2086
  $bin --listen 127.0.0.1:$port --log-level warn "${metrics[@]}" $args &
  server_pid=$!
  sleep 0.5
  local json
  if [ -n "${AB_JOURNAL:-}" ]; then
    target/release/mboard-bench --server 127.0.0.1:$port --duration "$duration" --warmup 1s --json "${bench[@]}" >"$data/bench.json" &
    local bench_pid=$!
    sleep 1.1
    m0=$(writer_counters)
    wait "$bench_pid"
    m1=$(writer_counters)
    json=$(cat "$data/bench.json")
  else
    json=$(target/release/mboard-bench --server 127.0.0.1:$port --duration "$duration" --warmup 1s --json "${bench[@]}")
  fi
  # The next id is how many publishes the server stored; its CPU time is fields 14 and 15.
  local cpu
  cpu=$(python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"1:probe", ("127.0.0.1", int(sys.argv[1])))
n = int(s.recvfrom(100)[0].decode().split(":")[1])
fields = open(f"/proc/{sys.argv[2]}/stat").read().rsplit(")", 1)[1].split()
ticks = int(fields[11]) + int(fields[12])
print(round(ticks * 1e6 / 100 / max(n, 1), 2))
' "$port" "$server_pid")
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  python3 -c '
import json, sys
r = json.loads(sys.argv[2])
row = [sys.argv[1], round(r["rate"]), r["p50_us"], r["p99_us"], sys.argv[3]]
if sys.argv[4]:
    def parse(text):
        return dict((k, float(v)) for k, v in (line.split() for line in text.splitlines()))
    a, b = parse(sys.argv[4]), parse(sys.argv[5])
    d = {k: b[k] - a[k] for k in a}
    commits = max(d["mboard_journal_commits_total"], 1)
    fsync = d["mboard_journal_fsync_seconds_sum"] / max(d["mboard_journal_fsync_seconds_count"], 1) * 1e6
    cycle = d["T"] / commits * 1e6
    row += [round(fsync, 1), round(cycle - fsync, 1), round(d["mboard_journal_records_total"] / commits, 1)]
print(*row)
' "$label" "$json" "$cpu" "$m0" "$m1"
}

writer_counters() { # the wall clock and the journal writer's counters, "name value" a line
  echo "T $(date +%s.%N)"
  curl -s "127.0.0.1:$((port + 1))/metrics" |
    grep -E '^mboard_journal_(commits_total|records_total|fsync_seconds_sum|fsync_seconds_count) '
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
def col(label, i):
    return [float(r[i]) for r in rows if r[0] == label]
a, b = col("A", 1), col("B", 1)
pairs = [y / x for x, y in zip(a, b)]
print(f"publishes/s: median A {statistics.median(a):.0f}, median B {statistics.median(b):.0f}; B/A per round {[round(p, 2) for p in pairs]}, median {statistics.median(pairs):.3f}")
ca, cb = col("A", 4), col("B", 4)
cpairs = [y / x for x, y in zip(ca, cb)]
print(f"server CPU per publish: median A {statistics.median(ca):.2f} us, median B {statistics.median(cb):.2f} us; B/A per round {[round(p, 2) for p in cpairs]}, median {statistics.median(cpairs):.3f}")
if len(rows[0]) > 5:
    for i, what in ((5, "mean fsync"), (6, "writer time per commit outside the fsync"), (7, "publishes per commit")):
        xa, xb = col("A", i), col("B", i)
        ps = [y / x for x, y in zip(xa, xb)]
        print(f"{what}: median A {statistics.median(xa):.1f}, median B {statistics.median(xb):.1f}; B/A per round {[round(p, 2) for p in ps]}, median {statistics.median(ps):.3f}")
'
