#!/bin/sh
# llmq-worker-entry: the worker's command line in docker-compose, built from
# the environment the compose file passes (see docker-compose.yml).
#
#   LLMQ_PROVIDER      sim (default), openai, anthropic, echo
#   LLMQ_BASE_URL      provider URL; else OPENAI_BASE_URL / ANTHROPIC_BASE_URL
#                      for openai / anthropic, else the provider's official
#                      URL; the simulator (http://sim:8089/v1) only for sim
#   LLMQ_MODEL, LLMQ_CAPACITY, LLMQ_BROKER
#   LLMQ_WORKER_CURVE_CERT, LLMQ_WORKER_BROKER_KEY   CURVE (deploy/keys.sh)
#   LLMQ_PRINT_COMMAND=1   print the command line instead of running it
set -eu
provider="${LLMQ_PROVIDER:-sim}"
set -- llmq-worker --broker "${LLMQ_BROKER:-tcp://broker:5556}" \
  --provider "$provider" --model "${LLMQ_MODEL:-sim-model}" \
  --capacity "${LLMQ_CAPACITY:-256}" --metrics "0.0.0.0:9101"
url="${LLMQ_BASE_URL:-}"
case "$provider" in
  sim) url="${url:-http://sim:8089/v1}" ;;
  openai) url="${url:-${OPENAI_BASE_URL:-}}" ;;
  anthropic) url="${url:-${ANTHROPIC_BASE_URL:-}}" ;;
esac
if [ -n "$url" ]; then
  set -- "$@" --base-url "$url"
fi
if [ -n "${LLMQ_WORKER_CURVE_CERT:-}" ]; then
  set -- "$@" --curve-cert "$LLMQ_WORKER_CURVE_CERT" \
    --broker-key "${LLMQ_WORKER_BROKER_KEY:?LLMQ_WORKER_BROKER_KEY is needed with a certificate}"
fi
# The variables below would override flags' defaults in llmq-worker itself;
# compose passes unset ones as "", which the worker would take as values.
unset LLMQ_BASE_URL LLMQ_CURVE_CERT LLMQ_BROKER_KEY
for v in OPENAI_API_KEY OPENAI_BASE_URL ANTHROPIC_API_KEY ANTHROPIC_BASE_URL; do
  eval "[ -n \"\${$v:-}\" ] || unset $v"
done
if [ "${LLMQ_PRINT_COMMAND:-}" = 1 ]; then
  printf '%s\n' "$@"
  exit 0
fi
exec "$@"
