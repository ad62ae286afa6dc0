#!/usr/bin/env bash
# Runs every Updraft test. On a fresh Debian machine it first installs the real programs the
# tests talk to (as root, or through sudo), then builds the binaries the cross-process tests
# start, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need, as "command:package".
needed=(
  "mosquitto_pub:mosquitto-clients"
  "mosquitto:mosquitto"
  "prometheus:prometheus"
  "ip:iproute2"
  "nft:nftables"
)
# mosquitto, ip and nft live in /usr/sbin, outside a normal user's PATH.
export PATH="$PATH:/usr/sbin"
missing=()
for pair in "${needed[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "installing test dependencies: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "need root to run: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The cross-process tests start the real binaries from target/debug.
cargo build --workspace --bins
cargo test --workspace "$@"
