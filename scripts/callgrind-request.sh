#!/usr/bin/env bash
# Counts the instructions an mboard server executes answering N copies of one request,
# with callgrind: repeatable, whatever else the machine is doing (timings on this shared VM
# are not). Prints callgrind's inclusive counts for the functions matching FUNCS.
#
#   scripts/callgrind-request.sh target/release/mboard-server '4:10' 5000 'encode_messages'
#   scripts/callgrind-request.sh target/release/mboard-server '5:{token}:sixteen byte txt' 20000
#
# `{token}` in the request stands for a fresh publish token (a UUID) in each copy, so that
# every `5:` is a new publish rather than a resend. CALLGRIND_OUT=FILE keeps the profile
# there (for callgrind_annotate) instead of deleting it.
#
# The board is seeded with ten 28-byte messages first; one receive loop (--workers 1).
set -euo pipefail
server=$1 pdu=$2 n=$3 funcs=${4:-PROGRAM TOTALS|Handler<[^ ]*>::handle::.{2}closure}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
out=${CALLGRIND_OUT:-$(mktemp /tmp/mboard-callgrind.XXXXXX)}
port=$((20000 + RANDOM % 20000))
valgrind --tool=callgrind --callgrind-out-file="$out" "$server" --in-memory \
  --listen 127.0.0.1:$port --workers 1 --log-level error 2>/dev/null &
pid=$!
send() {
  python3 - "$port" "$1" "$2" <<'PY'
import socket, sys, uuid
port, pdu, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(30)
for _ in range(n):
    s.sendto(pdu.replace("{token}", str(uuid.uuid4())).encode(), ("127.0.0.1", port))
    s.recvfrom(65536)
PY
}
until send "2:1" 1 2>/dev/null; do sleep 0.5; done
send "1:seed message of some length" 10
send "$pdu" "$n"
kill -TERM $pid
wait $pid || true
# Inclusive counts of the matching functions themselves (not of their callers' call lines).
callgrind_annotate --inclusive=yes "$out" | grep -v "=>\|drop_in_place" | grep -E "$funcs" | head -8
[ -n "${CALLGRIND_OUT:-}" ] || rm -f "$out"
