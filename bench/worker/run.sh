#!/usr/bin/env bash
# One llmq-worker against llmq-sim at 1 s latency, kept full at 2,000 and
# 10,000 requests in flight: req/s, worker CPU per request, worker RSS per
# in-flight request; and the echo provider's cost without HTTP. Usage: bench/worker/run.sh [BUILD_DIR] [SECONDS] [RUNS]
set -euo pipefail
BUILD=${1:-build}
SECONDS_RUN=${2:-20}
RUNS=${3:-3}
BIN=$BUILD/bin
ulimit -n "$(ulimit -Hn)"
# LLMQ_BENCH_NO_BUILD=1: use the binaries as built (ctest's smoke run must
# not rebuild its own build tree while other tests run from it).
[ "${LLMQ_BENCH_NO_BUILD:-0}" = 1 ] ||
  cmake --build "$BUILD" --target llmq-worker llmq-sim bench_worker -j2 >/dev/null

echo "echo provider (no HTTP), 256 in flight:"
"$BIN/bench_worker" "$BIN/llmq-worker" echo 256 "$SECONDS_RUN" 2 2>/dev/null

for cap in 2000 10000; do
  for run in $(seq "$RUNS"); do
    out=$(mktemp)
    "$BIN/llmq-sim" --port 0 --quiet --latency-ms 1000 >"$out" &
    sim=$!
    for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.1; done
    url=$(sed -n 's/^ready llmq-sim url=//p' "$out")
    echo -n "run=$run "
    "$BIN/bench_worker" "$BIN/llmq-worker" "$url/v1" "$cap" "$SECONDS_RUN" 5 2>/dev/null
    kill "$sim"; wait "$sim" 2>/dev/null || true
    rm -f "$out"
  done
done
