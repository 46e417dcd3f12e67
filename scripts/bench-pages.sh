#!/usr/bin/env bash
# The client reading a board larger than the server's session budget: `last -n 0` and
# `since 0` page through `6:` with memory for one page, where one `4:0` is refused busy.
# 300 messages of 1 MiB (300 MiB, past the default 256 MiB budget) on an in-memory board;
# each read's time and the client's peak resident memory, against one 5 MiB `last -n 5`.
#
#   scripts/bench-pages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/mboard-pages.XXXXXX")
port=7797
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

$bin/mboard-server --listen 127.0.0.1:$port --in-memory --log-level info 2>"$work/log" &
server_pid=$!
until grep -qs "serving" "$work/log"; do sleep 0.005; done
export MBOARD_SERVER=127.0.0.1:$port
head -c $((1 << 20)) /dev/zero | tr '\0' 'y' >"$work/text"
for _ in $(seq 300); do $bin/mboard-client publish --file "$work/text" >/dev/null; done
echo "board: $(( $($bin/mboard-client ids -n 1) + 1 )) messages of 1 MiB"
echo "one 4:0: $($bin/mboard-client raw 4:0 | head -c 20)"
for read in "last -n 0" "since 0" "last -n 5"; do
  # shellcheck disable=SC2086
  /usr/bin/time -f "$read: %e s, peak resident memory %M KiB" \
    $bin/mboard-client $read 2>&1 >"$work/out" | tail -1
  echo "  $(wc -l <"$work/out") lines, $(wc -c <"$work/out") bytes"
done
