#!/usr/bin/env bash
# llmq-gateway benchmark: the same 1 KB chat request, on the same cluster
# (llmq-broker + echo workers, no provider HTTP, so only llmq's own cost is
# measured), sent (a) straight to the broker through libllmq
# (gw_bench_direct, closed loop) and through `llmq run`, and (b) through
# llmq-gateway over HTTP with wrk (keep-alive, one request per connection
# outstanding). Concurrency 1 gives the added latency; concurrency C the
# throughput. Usage: gateway/bench/run.sh [SECONDS] [C]   (default 10 64)
# GW_ERR=FILE keeps the gateway's stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${LLMQ_BIN_DIR:-$ROOT/build/bin}"
SECS="${1:-10}"
CONC="${2:-64}"
T="$(mktemp -d /tmp/llmq-gw-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

ready() { # file -> waits for its ready line (bounded), prints it
  for _ in $(seq 1 200); do grep -m1 '^ready' "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "bench: no ready line in $1" >&2; exit 1
}

"$BIN/llmq-broker" --frontend 'tcp://127.0.0.1:*' --backend 'tcp://127.0.0.1:*' --batch-db none >"$T/broker" 2>/dev/null &
pids+=($!)
line="$(ready "$T/broker")"
FE="$(sed 's/.*frontend=\([^ ]*\).*/\1/' <<<"$line")"
BE="$(sed 's/.*backend=\([^ ]*\).*/\1/' <<<"$line")"
for i in 1 2; do
  "$BIN/llmq-worker" --broker "$BE" --provider echo --model bench-model --capacity 512 >"$T/worker$i" 2>/dev/null &
  pids+=($!)
  ready "$T/worker$i" >/dev/null
done
"$BIN/llmq-gateway" --broker "$FE" --port 0 --data-dir "$T/gwdata" >"$T/gw" 2>"${GW_ERR:-$T/gw.err}" &
pids+=($!)
GW="$(ready "$T/gw" | sed 's/.*url=//')"

# A 1 KB chat body.
python3 - "$T" <<'PY'
import json, sys
t = sys.argv[1]
text = ("The quick brown fox jumps over the lazy dog. " * 21)[:940]
body = {"model": "bench-model", "messages": [{"role": "user", "content": text}], "max_tokens": 16}
s = json.dumps(body)
open(t + "/body.json", "w").write(s)
lua = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' % json.dumps(s)
open(t + "/post.lua", "w").write(lua)
with open(t + "/in.jsonl", "w") as f:
    for i in range(20000):
        f.write(json.dumps({"custom_id": "r%d" % i, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
print("body bytes:", len(s))
PY

direct() { "$BIN/gw_bench_direct" "$FE" bench-model "$T/body.json" "$1" "$2"; }
viagw() { # seconds conc -> JSON like direct
  local threads=$(( $2 < 2 ? 1 : 2 ))
  wrk -t"$threads" -c"$2" -d"$1"s --latency -s "$T/post.lua" "$GW/v1/chat/completions" >"$T/wrk.out"
  python3 - "$T/wrk.out" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
def us(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit("bench: cannot read wrk's latency %r in:\n%s" % (v, out))
    return int(float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)])
dist = out[out.index("Latency Distribution"):]
p50 = re.search(r"^\s+50%\s+(\S+)", dist, re.M).group(1)
p99 = re.search(r"^\s+99%\s+(\S+)", dist, re.M).group(1)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print('{"requests":%d,"errors":%d,"rps":%.0f,"p50_us":%d,"p99_us":%d}' % (n, int(errs.group(1)) if errs else 0, rps, us(p50), us(p99)))
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== latency, 1 outstanding, ${SECS}s each"
echo "direct  $(direct "$SECS" 1)"
echo "gateway $(viagw "$SECS" 1)"
echo "== throughput, $CONC outstanding, ${SECS}s each"
echo "direct  $(direct "$SECS" "$CONC")"
echo "gateway $(viagw "$SECS" "$CONC")"
echo "== llmq run, 20000 lines, concurrency $CONC"
start=$(date +%s.%N)
"$BIN/llmq" run "$T/in.jsonl" -o "$T/out.jsonl" --broker "$FE" --concurrency "$CONC" --quiet --model bench-model
end=$(date +%s.%N)
python3 -c "import sys; s=$end-$start; print('llmq run: 20000 requests in %.2f s = %.0f req/s' % (s, 20000/s))"
