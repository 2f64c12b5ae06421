#!/usr/bin/env bash
# bench/outline/callgrind.sh - instructions per OUT line of `llmq run`, before
# and after (callgrind instruction counts: repeatable on a busy machine).
#
#   bench/outline/callgrind.sh [BASE_BUILD] [NEW_BUILD]
#
# BASE_BUILD / NEW_BUILD: Release build dirs of the two trees (defaults: the
# main tree's /work/wt/base/build-bench and this tree's build-bench), each
# with libllmq.a built. Two measures:
#   1. line_bench.c against each library: decode one res body and write its
#      OUT line, per line (the difference of 2N and N runs, so start-up
#      cancels out);
#   2. the whole `llmq run` client process against a local cluster
#      (llmq-sim at 0 ms, 1 worker, the NEW tree's broker/worker/sim), per
#      line (difference of 2N and N lines), with each tree's `llmq`.
# N (env, default 2000): lines of the smaller run. Needs valgrind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base="${1:-/work/wt/base/build-bench}"
new="${2:-$root/build-bench}"
n="${N:-2000}"
tmp="$(mktemp -d /tmp/outline-cg.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

libs="$(pkg-config --libs libczmq libzmq msgpack libcjson 2>/dev/null || echo -lczmq -lzmq -lmsgpackc -lcjson) -lsqlite3 -lm -lpthread"
count() { # count BIN ARGS...: instructions (Ir) of one run
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$@" >/dev/null 2>"$tmp/cg.err"
  grep -m1 '^summary:' "$tmp/cg.out" | awk '{print $2}'
}
per_line() { # per_line BIN: instructions per line of line_bench
  local a b
  a=$(count "$1" "$n"); b=$(count "$1" $((2 * n)))
  echo $(((b - a) / n))
}

for side in base new; do
  dir=$base; [ $side = new ] && dir=$new
  src=$root; [ $side = base ] && src="$(cd "$dir" && sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' CMakeCache.txt)"
  gcc -O3 -DNDEBUG -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
    -I"$src/include" -I"$src/client" -I"$dir/include" "$here/line_bench.c" \
    "$dir/libllmq.a" $libs -o "$tmp/line_bench_$side"
done
lb_base=$(per_line "$tmp/line_bench_base"); lb_new=$(per_line "$tmp/line_bench_new")
echo "line_bench (decode res body + write OUT line), instructions per line:"
echo "  before $lb_base  after $lb_new  ratio $(awk "BEGIN{printf \"%.2f\", $lb_base/$lb_new}")x"

# 2. The whole client process of `llmq run`.
python3 - "$tmp" "$n" <<'PY'
import json, sys
tmp, n = sys.argv[1], int(sys.argv[2])
for k in (n, 2 * n):
    with open("%s/in%d.jsonl" % (tmp, k), "w") as f:
        for i in range(k):
            f.write(json.dumps({"custom_id": "q%06d" % i, "prompt": "Question %d: what is %d times %d?" % (i, i, i + 1), "max_tokens": 16}) + "\n")
PY
"$new/bin/llmq-sim" --port 0 --latency-ms 0 > "$tmp/sim.out" 2>/dev/null &
for _ in $(seq 100); do grep -qs '^ready' "$tmp/sim.out" && break; sleep 0.1; done
sim_url=$(sed -n 's/^ready.* url=\([^ ]*\).*/\1/p' "$tmp/sim.out")
"$new/bin/llmq-broker" --frontend 'tcp://127.0.0.1:*' --backend 'tcp://127.0.0.1:*' > "$tmp/broker.out" 2>/dev/null &
for _ in $(seq 100); do grep -qs '^ready' "$tmp/broker.out" && break; sleep 0.1; done
fe=$(sed -n 's/^ready.* frontend=\([^ ]*\).*/\1/p' "$tmp/broker.out")
be=$(sed -n 's/^ready.* backend=\([^ ]*\).*/\1/p' "$tmp/broker.out")
OPENAI_API_KEY=sk-test-key "$new/bin/llmq-worker" --broker "$be" --provider sim --base-url "$sim_url/v1" \
  --model sim-model --capacity 64 > /dev/null 2> "$tmp/worker.err" &
for _ in $(seq 100); do grep -qs 'joined' "$tmp/worker.err" && break; sleep 0.1; done
run_count() { # run_count LLMQ K
  rm -f "$tmp/out.jsonl"
  count "$1" run "$tmp/in$2.jsonl" -o "$tmp/out.jsonl" --broker "$fe" --model sim-model \
    --concurrency 64 --quiet
}
for side in base new; do
  dir=$base; [ $side = new ] && dir=$new
  a=$(run_count "$dir/bin/llmq" "$n"); b=$(run_count "$dir/bin/llmq" $((2 * n)))
  eval "run_$side=$(((b - a) / n))"
done
echo "llmq run client process, instructions per line:"
echo "  before $run_base  after $run_new  ratio $(awk "BEGIN{printf \"%.2f\", $run_base/$run_new}")x"
