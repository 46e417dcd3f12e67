#!/usr/bin/env bash
# mboard side by side with its peers, in one run, on loopback.
#
#   scripts/compare-peers.sh [DURATION]     (default 10s per throughput measurement)
#
# Installs (from Debian packages, when missing) redis-server and redis-tools, tftp-hpa and
# tftpd-hpa, atftp, and atftpd (unpacked beside tftpd-hpa, which it conflicts with as a
# package), builds mboard in release mode, then runs scripts/compare_peers.py, which starts
# every server it needs, measures, stops them all and prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v in.tftpd >/dev/null || need+=(tftpd-hpa)
command -v tftp >/dev/null || need+=(tftp-hpa)
command -v atftp >/dev/null || need+=(atftp)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
tools=$(mktemp -d "${TMPDIR:-/tmp}/mboard-peers.XXXXXX")
trap 'rm -rf "$tools"' EXIT
(cd "$tools" && apt-get download -qq atftpd 2>/dev/null && dpkg-deb -x atftpd_*.deb root)
cargo build --release --quiet --bins
python3 scripts/compare_peers.py --atftpd "$tools/root/usr/sbin/atftpd" --duration "${1:-10s}"
