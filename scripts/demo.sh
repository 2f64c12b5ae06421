#!/usr/bin/env bash
# The main job: run the 1,000 sample prompts of examples/prompts.jsonl through
# an embedded local cluster (llmq-broker, 4 llmq-workers and, unless
# OPENAI_API_KEY is set, the bundled simulator llmq-sim) with a progress bar
# and a summary. Writes out/results.jsonl (OpenAI Batch output format).
#   bash scripts/demo.sh                 build (Release, once) and run
#   bash scripts/demo.sh --workers 8     extra flags go to `llmq run`
# Each demo starts from an empty out/results.jsonl; LLMQ_DEMO_RESUME=1 keeps
# it, so the run resumes and skips the lines already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${LLMQ_DEMO_BUILD:-$root/build-release}"
targets=(llmq_cli llmq-broker llmq-worker llmq-sim)
if [ ! -x "$build/bin/llmq" ] || [ ! -x "$build/bin/llmq-broker" ] \
   || [ ! -x "$build/bin/llmq-worker" ] || [ ! -x "$build/bin/llmq-sim" ] \
   || [ -n "$(find "$root/client" "$root/broker" "$root/worker" "$root/sim" "$root/proto" \
                   "$root/include" -newer "$build/bin/llmq" -name '*.[ch]' 2>/dev/null | head -1)" ]; then
  echo "demo: building llmq (Release) in $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLMQ_BUILD_TESTS=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null
fi
mkdir -p "$root/out"
out="$root/out/results.jsonl"
[ "${LLMQ_DEMO_RESUME:-0}" = 1 ] || rm -f "$out"
echo "demo: $build/bin/llmq run examples/prompts.jsonl -o out/results.jsonl $*"
set +e
"$build/bin/llmq" run "$root/examples/prompts.jsonl" -o "$out" "$@"
rc=$?
set -e
echo "demo: exit code $rc; first result:"
head -c 400 "$out"; echo
exit $rc
