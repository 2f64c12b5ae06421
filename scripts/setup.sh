#!/usr/bin/env bash
# Installs every Debian package llmq needs to build, test and run.
# Idempotent: runs `apt-get update` at most once and installs only what is missing.
set -euo pipefail

# Node client dependencies (bindings/node: npm ci from its lock file), run on
# every exit path once the Debian packages are in place.
# The gateway's SDK tests (tests/gateway: the official openai and
# @anthropic-ai/sdk packages) install the same way.
_llmq_node_install="$(cd "$(dirname "$0")/.." && pwd)/bindings/node/install.sh"
_llmq_gw_install="$(cd "$(dirname "$0")/.." && pwd)/tests/gateway/install.sh"
trap '[ -f "$_llmq_node_install" ] && { bash "$_llmq_node_install" || echo "setup: npm ci for bindings/node failed"; }; [ -f "$_llmq_gw_install" ] && { bash "$_llmq_gw_install" || echo "setup: npm ci for tests/gateway failed"; }' EXIT

PACKAGES=(
  build-essential cmake pkg-config git
  libzmq3-dev libczmq-dev libmsgpack-dev libcurl4-openssl-dev libssl-dev
  libcjson-dev libcyaml-dev libyaml-dev libevent-dev libsqlite3-dev
  clang clang-format libclang-rt-14-dev valgrind
  python3 python3-zmq python3-msgpack python3-pip python3-setuptools python3-venv mypy
  curl procps wrk iproute2 docker-compose
  prometheus
  gnuplot-nox python3-aiohttp
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
