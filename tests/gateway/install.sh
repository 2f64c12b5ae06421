#!/usr/bin/env bash
# Installs the official OpenAI and Anthropic SDKs (npm `openai`,
# `@anthropic-ai/sdk`) exactly as package-lock.json pins them, for the
# gateway's SDK tests. Idempotent: does nothing when node_modules matches.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec bash "$here/../../scripts/npm-ci.sh" "$here" "gateway tests" openai @anthropic-ai/sdk
