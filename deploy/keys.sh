#!/usr/bin/env bash
# Generate the CURVE keys of the docker-compose cluster and turn CURVE on.
#
#   bash deploy/keys.sh [CLIENT_NAME...]
#
# Writes deploy/keys/: broker (+ _secret), worker (+ _secret), one client
# keypair per name (default: client), and the allow-lists the broker reads
# (keys/clients/, keys/workers/: public certificates only). Then writes
# .env next to docker-compose.yml, which compose reads: the broker and the
# workers use the keys, and the ZeroMQ ports are published on every
# interface (without keys they stay on 127.0.0.1). Existing keys are kept.
# Copy a client's NAME_secret and keys/broker to the client machine:
#   llmq run in.jsonl -o out.jsonl --broker tcp://HOST:5555 \
#     --curve-cert NAME_secret --broker-key broker
# Revoke a client by deleting keys/clients/NAME (the broker re-reads it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
keys="$root/deploy/keys"
llmq="$(command -v llmq || true)"
[ -n "$llmq" ] || llmq="$root/build/bin/llmq"
if [ ! -x "$llmq" ]; then
  echo "keys.sh: no llmq binary (build first: cmake --build build)" >&2
  exit 2
fi
mkdir -p "$keys/clients" "$keys/workers"
gen() { [ -f "$keys/$1_secret" ] || "$llmq" keygen "$keys/$1" >/dev/null; }
gen broker
gen worker
cp "$keys/worker" "$keys/workers/worker"
[ $# -gt 0 ] || set -- client
for name in "$@"; do
  gen "$name"
  cp "$keys/$name" "$keys/clients/$name"
done
cat >"$root/.env" <<ENV
# Written by deploy/keys.sh: CURVE on for docker-compose.
LLMQ_BIND=0.0.0.0
LLMQ_BROKER_CURVE_CERT=/keys/broker_secret
LLMQ_BROKER_CLIENT_KEYS=/keys/clients
LLMQ_BROKER_WORKER_KEYS=/keys/workers
LLMQ_WORKER_CURVE_CERT=/keys/worker_secret
LLMQ_WORKER_BROKER_KEY=/keys/broker
ENV
echo "keys.sh: keys in $keys, CURVE on in $root/.env (clients: $*)"
