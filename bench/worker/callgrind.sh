#!/usr/bin/env bash
# Worker instructions per request, counted by callgrind (repeatable, unlike
# CPU time on a shared machine): one llmq-worker --provider sim under
# valgrind --tool=callgrind against llmq-sim (200 ms, 256 in flight, as one
# of four workers in the 10,000-prompt run), driven by bench_worker with a
# fixed request count. It runs N and 2N requests and reports
# (Ir(2N) - Ir(N)) / N, so start-up and shut-down cancel out, then the top
# functions of the 2N run (inclusive and self). The same for curl_floor (a
# tuned libcurl client posting the same request, nothing else): the floor,
# and once more with the libcurl options the worker sets (curl_floor.c,
# LLMQ_FLOOR_WORKER_OPTS). LLMQ_BENCH_FLOOR=0 skips both.
# Usage: bench/worker/callgrind.sh [BUILD_DIR] [N] [OUT_DIR]
set -euo pipefail
BUILD=${1:-build}
N=${2:-2000}
OUT=${3:-$(mktemp -d /tmp/llmq-wcg.XXXXXX)}
BIN=$(cd "$BUILD/bin" && pwd)
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
[ "${LLMQ_BENCH_NO_BUILD:-0}" = 1 ] ||
  cmake --build "$BUILD" --target llmq-worker llmq-sim bench_worker curl_floor -j2 >/dev/null

. "$(dirname "$0")/sim.sh"
start_sim

ir_of() { # total Ir of a callgrind out file
  sed -n 's/^summary: //p; s/^totals: //p' "$1" | head -1 | awk '{print $1}'
}
run() { # $1 = request count -> callgrind out file
  local n=$1 wrap=$OUT/worker-$1.sh
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s %s "$@" 2>%s\n' \
    "$OUT/cg-$n.out" "$BIN/llmq-worker" "$OUT/vg-$n.log" >"$wrap"
  chmod +x "$wrap"
  "$BIN/bench_worker" "$wrap" "$url/v1" 256 600 0 "$n" >"$OUT/bench-$n.txt" 2>&1
  for _ in $(seq 300); do [ -s "$OUT/cg-$n.out" ] && grep -q '^totals:\|^summary:' "$OUT/cg-$n.out" && break; sleep 0.1; done
}
run "$N"
run $((2 * N))
a=$(ir_of "$OUT/cg-$N.out")
b=$(ir_of "$OUT/cg-$((2 * N)).out")
echo "requests=$N ir_n=$a ir_2n=$b ir_per_request=$(((b - a) / N))"
floor() { # $1 = request count, $2 = out name: curl_floor under callgrind
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$2-$1.out" \
    "$BIN/curl_floor" "$url/v1" "$1" 256 >"$OUT/$2-$1.txt" 2>"$OUT/vg-$2-$1.log"
}
floor_pair() { # $1 = out name, $2 = label
  floor "$N" "$1"
  floor $((2 * N)) "$1"
  fa=$(ir_of "$OUT/$1-$N.out")
  fb=$(ir_of "$OUT/$1-$((2 * N)).out")
  echo "$2 requests=$N ir_n=$fa ir_2n=$fb ir_per_request=$(((fb - fa) / N))"
}
if [ "${LLMQ_BENCH_FLOOR:-1}" = 1 ]; then
  floor_pair floor curl_floor
  # The same client with the libcurl options the worker needs (timeouts,
  # header callback, ...): the part of the gap those options cost libcurl.
  LLMQ_FLOOR_WORKER_OPTS=1 floor_pair floor-opts curl_floor_worker_opts
fi
cat "$OUT/bench-$N.txt" "$OUT/bench-$((2 * N)).txt"
callgrind_annotate --inclusive=yes "$OUT/cg-$((2 * N)).out" 2>/dev/null | sed -n '1,60p' >"$OUT/inclusive.txt"
callgrind_annotate "$OUT/cg-$((2 * N)).out" 2>/dev/null | sed -n '1,60p' >"$OUT/self.txt"
echo "profiles: $OUT/inclusive.txt $OUT/self.txt"
