#!/usr/bin/env bash
# scripts/fuzz.sh - build the protocol decoder's libFuzzer target with clang
# and run it for a bounded time from the seed corpus in proto/fuzz/corpus.
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh        (default 60 s)
#
# Builds in build-fuzz/ (clang, -fsanitize=fuzzer,address,undefined). New
# inputs the fuzzer finds go to build-fuzz/corpus, never into the repository;
# a crash is written to build-fuzz/crash-* and makes the script fail.
# Prints the number of executions at the end: "fuzz: N executions in S s".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-fuzz"
seconds="${FUZZ_SECONDS:-60}"
cc="${CC:-clang}"
command -v "$cc" >/dev/null || { echo "fuzz.sh: $cc not found (apt-get install clang)" >&2; exit 2; }

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER="$cc" -DLLMQ_FUZZ=ON \
      -DLLMQ_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target fuzz_msg -j"$(nproc)" >/dev/null

mkdir -p "$build/corpus"
cd "$build"
log="$build/fuzz.log"
status=0
"$build/bin/fuzz_msg" -max_total_time="$seconds" -max_len=4096 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/" \
    "$build/corpus" "$root/proto/fuzz/corpus" >"$log" 2>&1 || status=$?

runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | awk '{print $2}')
if [ -z "$runs" ]; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{print $2}' | tail -1)
fi
tail -n 20 "$log" | grep -E 'ERROR|runtime error|crash|Done|stat::' || true
echo "fuzz: ${runs:-0} executions in ${seconds} s (log: $log)"
if [ "$status" -ne 0 ]; then
    echo "fuzz.sh: the fuzzer found a failure (exit $status), see $log" >&2
    exit 1
fi
