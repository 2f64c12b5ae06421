#!/usr/bin/env bash
# Measures llmq-sim capacity with wrk (Debian package `wrk`, see scripts/setup.sh).
#
#   bench/sim/run.sh [BIN_DIR] [SECONDS] [CONNECTIONS]
#
# Scenarios, each 3 runs of SECONDS with CONNECTIONS keep-alive connections
# (wrk -t2 on the same 2-core machine, so wrk and llmq-sim share the CPU):
#   models-0ms : GET /v1/models            (baseline: the cheapest route)
#   chat-0ms   : POST /v1/chat/completions (no latency)
#   chat-200ms : POST /v1/chat/completions with --latency-ms 200
#                (ceiling = CONNECTIONS / 0.2 s)
# Prints one markdown row per scenario: median req/s, min..max, p50/p99 latency
# of the median run, and the simulator's own CPU time per request (user +
# system from /proc, divided by requests served): 1e6 / that = what one core
# could serve with a client that cost nothing. Every request body differs, so
# double billing stays 0.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${LLMQ_BIN_DIR:-$here/../../build/bin}}"
secs="${2:-10}"
conns="${3:-1000}"
sim="$bin/llmq-sim"
command -v wrk >/dev/null || { echo "wrk not installed: bash scripts/setup.sh" >&2; exit 2; }
[ -x "$sim" ] || { echo "no llmq-sim at $sim" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

start_sim() {
  local out; out="$(mktemp)"
  "$sim" --port 0 --quiet "$@" >"$out" &
  sim_pid=$!
  for _ in $(seq 100); do
    grep -q '^ready ' "$out" && break
    sleep 0.05
  done
  url="$(sed -n 's/^ready llmq-sim url=//p' "$out")"
  rm -f "$out"
  [ -n "$url" ] || { echo "llmq-sim did not start" >&2; exit 1; }
}

# CPU time (user + system) of the simulator so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$sim_pid/stat"; }

stop_sim() { kill "$sim_pid" 2>/dev/null; wait "$sim_pid" 2>/dev/null || true; }

# run_scenario NAME WRK_ARGS... -- SIM_FLAGS...
run_scenario() {
  local name="$1"; shift
  local wrk_args=() sim_flags=()
  while [ "$1" != "--" ]; do wrk_args+=("$1"); shift; done; shift
  sim_flags=("$@")
  start_sim "${sim_flags[@]}"
  local rows=() db=0
  for i in 1 2 3; do
    curl -s -X POST "$url/_reset" >/dev/null   # billing memory and counts per run
    local t0; t0="$(cpu_ticks)"
    local out; out="$(wrk -t2 -c"$conns" -d"${secs}s" --latency "${wrk_args[@]/URL/$url}" 2>&1)"
    local rps p50 p99 errs
    rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    errs="$(awk '/Socket errors|Non-2xx/ {printf "%s ", $0}' <<<"$out")"
    local t1 st total us; t1="$(cpu_ticks)"
    st="$(curl -s "$url/_stats")"
    total="$(sed -n 's/.*"total":\([0-9]*\).*/\1/p' <<<"$st")"
    us="$(awk -v a="$t0" -v b="$t1" -v n="$total" -v k="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b-a)/k*1e6/n}')"
    rows+=("$rps $p50 $p99 $us")
    local d; d="$(sed -n 's/.*"double_billed":\([0-9]*\).*/\1/p' <<<"$st")"
    [ "${d:-0}" -le "$db" ] || db="$d"
    [ -z "$errs" ] || echo "  $name run $i: $errs" >&2
  done
  stop_sim
  printf '%s\n' "${rows[@]}" | sort -n | awk -v name="$name" -v conns="$conns" -v db="$db" '
    { r[NR]=$1; l50[NR]=$2; l99[NR]=$3; us[NR]=$4 }
    END {
      printf "| %s | %d | %.0f | %.0f..%.0f | %s | %s | %s | %s |\n", name, conns, r[2], r[1], r[3], l50[2], l99[2], us[2], db
    }'
}

echo "# llmq-sim capacity: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| scenario | connections | median req/s | min..max req/s | p50 | p99 | sim CPU us/request | double_billed (max of runs) |"
echo "|---|---|---|---|---|---|---|---|"
run_scenario models-0ms -H "Authorization: Bearer bench-key" URL/v1/models --
run_scenario chat-0ms -s "$here/chat.lua" URL --
run_scenario chat-200ms -s "$here/chat.lua" URL -- --latency-ms 200
