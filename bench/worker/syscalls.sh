#!/usr/bin/env bash
# Worker system calls and wake-ups per request at the e2e rate: one
# llmq-worker --provider sim (llmq-sim at 200 ms, 256 in flight: about
# 1,250 req/s, one of the four workers of the 10,000-prompt run) driven by
# bench_worker for a fixed request count, once under `strace -c -f`
# (system calls by name, all threads) and once under `perf stat` (task
# clock, context switches). Prints both tables and the per-request totals.
# Usage: bench/worker/syscalls.sh [BUILD_DIR] [REQUESTS] [OUT_DIR]
set -euo pipefail
BUILD=${1:-build}
N=${2:-5000}
OUT=${3:-$(mktemp -d /tmp/llmq-wsys.XXXXXX)}
BIN=$(cd "$BUILD/bin" && pwd)
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
[ "${LLMQ_BENCH_NO_BUILD:-0}" = 1 ] ||
  cmake --build "$BUILD" --target llmq-worker llmq-sim bench_worker -j2 >/dev/null

. "$(dirname "$0")/sim.sh"
start_sim

run() { # $1 = name, $2... = tracer attached by pid (-p PID appended)
  local name=$1 wrap=$OUT/worker-$1.sh
  shift
  # The tracer attaches to the worker, which gets bench_worker's SIGTERM.
  cat >"$wrap" <<WRAP
#!/bin/sh
"$BIN/llmq-worker" "\$@" &
w=\$!
# Attach once its threads (main, worker actor, libzmq's two) exist:
# perf stat -p counts only the threads there at attach time.
for _ in \$(seq 100); do [ "\$(ls /proc/\$w/task 2>/dev/null | wc -l)" -ge 4 ] && break; sleep 0.02; done
$* -p \$w &
t=\$!
trap 'kill -TERM \$w' TERM INT
wait \$w
wait \$w
wait \$t
WRAP
  chmod +x "$wrap"
  "$BIN/bench_worker" "$wrap" "$url/v1" 256 600 0 "$N" >"$OUT/bench-$name.txt" 2>&1
}
run strace strace ${LLMQ_SYS_STRACE_ARGS:--c} -f -o "$OUT/strace.txt"
[ "${LLMQ_SYS_STRACE_ARGS:-}" ] && exit 0
run perf perf stat -e task-clock,context-switches,cpu-migrations -o "$OUT/perf.txt"
for _ in $(seq 100); do [ -s "$OUT/strace.txt" ] && [ -s "$OUT/perf.txt" ] && break; sleep 0.1; done
cat "$OUT/strace.txt" "$OUT/perf.txt" "$OUT/bench-perf.txt"
awk -v n="$N" '/total$/ {printf "syscalls_per_request=%.2f\n", $4 / n}' "$OUT/strace.txt"
awk -v n="$N" '/task-clock/ {gsub(",", "", $1); printf "task_clock_us_per_request=%.1f\n", $1 * 1000 / n}
  /context-switches/ {gsub(",", "", $1); printf "context_switches_per_request=%.2f\n", $1 / n}' "$OUT/perf.txt"
