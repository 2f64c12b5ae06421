#!/usr/bin/env bash
# Installs the Node client's npm dependencies (zeromq 6 with its prebuilt
# addon, @msgpack/msgpack) exactly as package-lock.json pins them.
# Idempotent: does nothing when node_modules matches the lock file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec bash "$here/../../scripts/npm-ci.sh" "$here" "node client" zeromq @msgpack/msgpack
