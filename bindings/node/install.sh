#!/usr/bin/env bash
# Installs the Node client's npm dependencies (zeromq 6 with its prebuilt
# addon, @msgpack/msgpack) exactly as package-lock.json pins them.
# Idempotent: does nothing when node_modules matches the lock file.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "node client: installing Debian's nodejs and npm"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
stamp=node_modules/.llmq-lock-stamp
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" \
   && node -e 'require("zeromq"); require("@msgpack/msgpack")' >/dev/null 2>&1; then
  exit 0
fi
echo "node client: npm ci (bindings/node)"
npm ci --no-audit --no-fund --loglevel=error
node -e 'require("zeromq"); require("@msgpack/msgpack")'
cp package-lock.json "$stamp"
