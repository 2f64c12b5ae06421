#!/usr/bin/env bash
# Runs every llmq benchmark (issue 7) and collects their tables.
#
#   bench/run-all.sh [--smoke] [--build DIR] [--results DIR] [PART...]
#
# PARTs (default: all, in this order):
#   sim        llmq-sim capacity with wrk                 (bench/sim/run.sh)
#   broker     broker vs raw zmq_proxy: req/s, p50/p99 at 1k and 5k req/s,
#              CPU per request; 1 and 4 clients x 2 and 4 echo workers
#              (bench/broker/bench_broker.py)
#   memory     broker RSS and ping with 1,000,000 queued 1 KB requests
#              (bench/broker/bench_broker.py --parts memory)
#   worker     one llmq-worker at 2,000 and 10,000 in flight (bench/worker/run.sh)
#   e2e        10,000 prompts: llmq run vs sequential, aiohttp, openai SDK
#              (bench/e2e/bench_e2e.py)
#   bindings   10,000 requests through the Python and Node packages vs a
#              hand-written aiohttp client (bench/bindings/bench_bindings.py)
#   ratelimit  share of llmq-sim's --rpm used, 429s (bench/ratelimit/bench_ratelimit.py)
#   run-memory peak RSS of `llmq run` on 200,000, 1,000,000 and 2,000,000 lines
#              (embedded cluster, llmq-sim at 0 ms), and of the baseline
#              binaries in $LLMQ_BASELINE_BIN (if set) on 200,000
#              (bench/run/bench_run_memory.py)
#   plot       data and PNGs of BENCHMARKS.md (bench/plot/collect.py)
#
# --smoke: each part in a few seconds (tiny sizes, one run): checks that the
# scripts work, measures nothing worth quoting. ctest runs these
# (bench.smoke.<part>). Without --smoke a whole run takes about 20 minutes on
# 2 cores; each part is bounded by `timeout` and one failing part does not
# stop the others.
#
# $LLMQ_BASELINE_BIN=DIR: before/after in the same run: e2e also runs DIR's
# llmq, broker and workers in its rounds (bench_e2e.py --baseline-bin), broker
# runs DIR's llmq-broker in every trial and under callgrind (bench_broker.py
# --baseline-bin; the callgrind part runs when valgrind is installed).
#
# Binaries: --build DIR (a cmake build directory), else $LLMQ_BIN_DIR/.. when
# set, else build-bench/ in the repository (configured Release and built
# here). Results: --results DIR, else $LLMQ_BENCH_RESULTS, else
# bench/results/: <part>.md (+ .json, .log), not committed; the full
# run's tables are copied into BENCHMARKS.md by hand, with the load average.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
smoke=0
build=""
results="${LLMQ_BENCH_RESULTS:-$here/results}"
parts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --build) build="$2"; shift ;;
    --build=*) build="${1#--build=}" ;;
    --results) results="$2"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//; /^set -uo/d'; exit 0 ;;
    -*) echo "run-all: unknown flag $1" >&2; exit 2 ;;
    *) parts+=("$1") ;;
  esac
  shift
done
all=(sim broker memory worker e2e bindings ratelimit run-memory plot)
[ ${#parts[@]} -gt 0 ] || parts=("${all[@]}")
for p in "${parts[@]}"; do
  case " ${all[*]} " in *" $p "*) ;; *) echo "run-all: unknown part $p (${all[*]})" >&2; exit 2 ;; esac
done

if [ -z "$build" ]; then
  if [ -n "${LLMQ_BIN_DIR:-}" ]; then
    build="$(cd "$LLMQ_BIN_DIR/.." && pwd)"
  else
    build="$root/build-bench"
    if [ ! -f "$build/CMakeCache.txt" ]; then
      cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
    fi
    cmake --build "$build" -j2 >/dev/null || { echo "run-all: build failed" >&2; exit 1; }
  fi
fi
bin="$build/bin"
export LLMQ_BIN_DIR="$bin"
py=/usr/bin/python3
mkdir -p "$results"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# run_part NAME SECONDS CMD...: run CMD under `timeout`, output to results/NAME.md
failed=()
run_part() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "== $name ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
  timeout --kill-after=10 "$limit" "$@" >"$results/$name.md" 2>"$results/$name.log"
  local rc=$?
  cat "$results/$name.md"
  if [ $rc -ne 0 ]; then
    failed+=("$name")
    echo "!! $name failed (exit $rc$([ $rc -eq 124 ] && echo ", timed out after ${limit}s")); log: $results/$name.log"
    tail -5 "$results/$name.log" | sed 's/^/   /'
  fi
  echo "== $name: $((SECONDS - t0)) s"
  echo
}

# Callgrind needs valgrind and binaries without a sanitizer (valgrind cannot
# run an ASan build: the CI's sanitizer pass runs these smoke parts too).
can_callgrind() {
  command -v valgrind >/dev/null && ! grep -qa -e __asan_init -e __tsan_init "$bin/llmq-broker"
}

for p in "${parts[@]}"; do
  case "$p" in
    sim)
      if [ $smoke = 1 ]; then run_part sim 120 bash "$here/sim/run.sh" "$bin" 1 50
      else run_part sim 400 bash "$here/sim/run.sh" "$bin" 10 1000; fi ;;
    broker)
      if [ $smoke = 1 ]; then
        run_part broker 120 $py "$here/broker/bench_broker.py" --smoke --parts throughput,load \
          --clients 1 --workers 2 --json "$results/broker.json"
        if can_callgrind; then
          run_part broker-callgrind 120 $py "$here/broker/bench_broker.py" --smoke --parts callgrind \
            --json "$results/broker-callgrind.json"
        fi
      else
        # The matrix: 1 and 4 clients x 2 and 4 echo workers, one table each.
        for c in 1 4; do for w in 2 4; do
          run_part "broker-c${c}w${w}" 600 $py "$here/broker/bench_broker.py" --parts throughput,load \
            --clients $c --workers $w --json "$results/broker-c${c}w${w}.json" \
            ${LLMQ_BASELINE_BIN:+--baseline-bin "$LLMQ_BASELINE_BIN"}
        done; done
        # Instructions per request (issue 19): repeatable where CPU seconds are not.
        if can_callgrind; then
          run_part broker-callgrind 600 $py "$here/broker/bench_broker.py" --parts callgrind \
            --json "$results/broker-callgrind.json" ${LLMQ_BASELINE_BIN:+--baseline-bin "$LLMQ_BASELINE_BIN"}
        fi
      fi ;;
    memory)
      if [ $smoke = 1 ]; then
        run_part memory 120 $py "$here/broker/bench_broker.py" --smoke --parts memory --json "$results/memory.json"
      else
        run_part memory 600 $py "$here/broker/bench_broker.py" --parts memory --json "$results/memory.json"
      fi ;;
    worker)
      if [ $smoke = 1 ]; then run_part worker 120 bash "$here/worker/run.sh" "$build" 2 1
      else run_part worker 900 bash "$here/worker/run.sh" "$build" 20 3; fi ;;
    e2e)
      if [ $smoke = 1 ]; then run_part e2e 120 $py "$here/e2e/bench_e2e.py" --smoke --json "$results/e2e.json"
      else run_part e2e 900 $py "$here/e2e/bench_e2e.py" --json "$results/e2e.json" \
             ${LLMQ_BASELINE_BIN:+--baseline-bin "$LLMQ_BASELINE_BIN"}; fi ;;
    bindings)
      if [ $smoke = 1 ]; then run_part bindings 120 $py "$here/bindings/bench_bindings.py" --smoke --bin "$build/bin" --json "$results/bindings.json"
      else run_part bindings 1500 $py "$here/bindings/bench_bindings.py" --bin "$build/bin" --json "$results/bindings.json"; fi ;;
    ratelimit)
      if [ $smoke = 1 ]; then run_part ratelimit 120 $py "$here/ratelimit/bench_ratelimit.py" --smoke --json "$results/ratelimit.json"
      else run_part ratelimit 400 $py "$here/ratelimit/bench_ratelimit.py" --json "$results/ratelimit.json"; fi ;;
    run-memory)
      base=()
      [ -n "${LLMQ_BASELINE_BIN:-}" ] && base=(--baseline-bin "$LLMQ_BASELINE_BIN")
      if [ $smoke = 1 ]; then run_part run-memory 120 $py "$here/run/bench_run_memory.py" --smoke \
                                --bin "$bin" "${base[@]}" --json "$results/run-memory.json"
      else run_part run-memory 7200 $py "$here/run/bench_run_memory.py" --bin "$bin" "${base[@]}" \
                                --json "$results/run-memory.json"; fi ;;
    plot)
      # Smoke draws into results/ so the committed PNGs stay those of the full run.
      # With e2e's JSON from this run (or an earlier one) it also draws e2e.png.
      if [ $smoke = 1 ]; then run_part plot 120 $py "$here/plot/collect.py" --smoke --out "$results/plot" \
                                --e2e-json "$results/e2e.json"
      else run_part plot 900 $py "$here/plot/collect.py" --e2e-json "$results/e2e.json"; fi ;;
  esac
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "run-all: failed: ${failed[*]}"
  exit 1
fi
echo "run-all: ${#parts[@]} part(s) done; tables in $results"
