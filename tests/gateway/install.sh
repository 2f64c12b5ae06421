#!/usr/bin/env bash
# Installs the official OpenAI and Anthropic SDKs (npm `openai`,
# `@anthropic-ai/sdk`) exactly as package-lock.json pins them, for the
# gateway's SDK tests. Idempotent: does nothing when node_modules matches.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "gateway tests: installing Debian's nodejs and npm"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
stamp=node_modules/.llmq-lock-stamp
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" \
   && node -e 'require("openai"); require("@anthropic-ai/sdk")' >/dev/null 2>&1; then
  exit 0
fi
echo "gateway tests: npm ci (tests/gateway)"
npm ci --no-audit --no-fund --loglevel=error
node -e 'require("openai"); require("@anthropic-ai/sdk")'
cp package-lock.json "$stamp"
