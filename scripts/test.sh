#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs the system packages the
# end-to-end tests run for real (nats-server for the clustered store; nginx with its
# stream module for the load-balancer test; openssl, which makes the NATS TLS tests'
# certificates; redis-server for the bench's peer scenario) when they are missing, then
# runs every test.
# Extra arguments go to `cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nats-server nginx libnginx-mod-stream openssl redis-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
        "${sudo[@]}" apt-get update
        "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

echo "== cargo test --workspace $*"
exec cargo test --workspace "$@"
