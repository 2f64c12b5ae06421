#!/usr/bin/env bash
# Sets up the machine, builds llmq and runs every test with ctest.
#   bash scripts/test.sh            normal build (build/)
#   LLMQ_SANITIZE=1 bash scripts/test.sh   ASan+UBSan build (build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ "${LLMQ_SANITIZE:-0}" = 1 ]; then
  dir=build-asan
  opts=(-DLLMQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
  # Leaks are errors; zmq/czmq background threads are fine.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
else
  dir=build
  opts=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
fi

cmake -S . -B "$dir" -DLLMQ_BUILD_TESTS=ON "${opts[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
rc=0
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --timeout 300 || rc=$?
# Skips are visible with their reasons (a skip is never a pass).
bash scripts/skipped.sh "$dir"
exit $rc
