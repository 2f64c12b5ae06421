#!/usr/bin/env bash
# npm-ci.sh DIR LABEL MODULE...: installs DIR's npm dependencies exactly as
# its package-lock.json pins them (Debian's nodejs and npm first, if
# missing), then checks that node can load each MODULE. Idempotent: does
# nothing when node_modules already matches the lock file. The one home of
# "npm ci from a committed lock file" for every Node part of the tree.
set -euo pipefail
dir=$1 label=$2
shift 2
cd "$dir"
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "$label: installing Debian's nodejs and npm"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
check=""
for m in "$@"; do check+="require(\"$m\");"; done
stamp=node_modules/.llmq-lock-stamp
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" && node -e "$check" >/dev/null 2>&1; then
  exit 0
fi
echo "$label: npm ci ($dir)"
npm ci --no-audit --no-fund --loglevel=error
node -e "$check"
cp package-lock.json "$stamp"
