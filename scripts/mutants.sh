#!/usr/bin/env bash
# Mutation check of the test suite: small deliberate breakages of documented
# behaviour, applied one at a time to a scratch copy of the source, each
# built and run against the tests that should notice it. A mutant the tests
# miss ("survived") means a rule nobody checks: the script exits 1.
#
#   bash scripts/mutants.sh              every mutant
#   bash scripts/mutants.sh NAME...      only these (names: --list)
#   bash scripts/mutants.sh --list
#
# MUTANTS_DIR (default /tmp/llmq-mutants-<uid>) holds the scratch copy and
# its build directory; it is kept between runs, so a rerun builds
# incrementally. The tree under test is this checkout, uncommitted changes
# included. CPU heavy: about one incremental build and a few ctests per
# mutant (-j2). Not part of CI; its output goes into the issue's note.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTANTS_DIR:-/tmp/llmq-mutants-$(id -u)}"
src="$work/src"
build="$work/build"
jobs="${MUTANTS_JOBS:-2}"

# name | file | tests (ctest -R) | python: the old text -> the new text
# Each mutant is a Python dict entry below; the replacement must match
# exactly `count` times (default 1) or the mutant is reported as stale.
read -r -d '' MUTANTS <<'EOF' || true
[
 {"name": "limiter_rpm_never_consumes",
  "why": "the rpm bucket never loses a token: no rpm limiting at all",
  "file": "worker/llmq_limiter.c",
  "old": "    if (rpm > 0)\n        self->req_level -= 1.0;\n",
  "new": "",
  "tests": "^worker\\.rpm$|^broker\\.it\\.limit_group$"},
 {"name": "limiter_tpm_never_consumes",
  "why": "the tpm bucket never loses tokens at start",
  "file": "worker/llmq_limiter.c",
  "old": "    if (tpm > 0 && tokens > 0)\n        self->tok_level -= (double)tokens;\n",
  "new": "",
  "tests": "^worker\\.rpm$"},
 {"name": "limit_group_not_split",
  "why": "each member of a limit group gets the whole group limit",
  "file": "broker/llmq_broker.c",
  "old": "rpm ? rpm / (int64_t)members : 0;",
  "new": "rpm ? rpm : 0;",
  "tests": "^broker\\.it\\.limit_group$"},
 {"name": "requeue_to_back",
  "why": "a dead worker's requests go to the back of the queue",
  "file": "broker/llmq_broker.c",
  "old": "    if (s_enqueue(self, r, true))\n        s_fail(self, r, LLMQ_ERR_INTERNAL,\n               \"broker could not requeue",
  "new": "    if (s_enqueue(self, r, false))\n        s_fail(self, r, LLMQ_ERR_INTERNAL,\n               \"broker could not requeue",
  "tests": "^broker\\.it\\.requeue_front$"},
 {"name": "death_count_never_enforced",
  "why": "a poison request is requeued forever: the death count stops nothing",
  "file": "broker/llmq_broker.c",
  "old": "    if (r->deaths >= s_MAX_DEATHS) {",
  "new": "    if (0) {",
  "tests": "^broker\\.it\\.death_count$"},
 {"name": "strong_death_weight_wrong",
  "why": "a death that may be the request's fault adds 2, not 3 (8 deaths, not 6)",
  "file": "broker/llmq_broker.c",
  "old": "#define s_STRONG_DEATH 3",
  "new": "#define s_STRONG_DEATH 2",
  "tests": "^broker\\.it\\.death_count$"},
 {"name": "never_requeued",
  "why": "a dead worker's requests fail at once instead of being requeued",
  "file": "broker/llmq_broker.c",
  "old": "    if (r->deaths >= s_MAX_DEATHS) {",
  "new": "    if (1) {",
  "tests": "^broker\\.it\\.(requeue_front|kill9|death_count)$"},
 {"name": "resend_never_attached",
  "why": "a worker's held report is ignored: after a broker restart every resend is dispatched afresh (paid twice)",
  "file": "broker/llmq_broker.c",
  "old": "        if (!cJSON_IsString(k) || !k->valuestring[0])\n            continue;\n        s_request_t *r = s_pending_by_rkey",
  "new": "        if (k)\n            continue;\n        s_request_t *r = s_pending_by_rkey",
  "tests": "^churn\\.restart$"},
 {"name": "breaker_counts_every_failure",
  "why": "every retry of a failing request counts toward the circuit breaker",
  "file": "worker/llmq_worker.c",
  "old": "    if (job->attempts == 1 && s_is_provider_failure(&job->err)) {",
  "new": "    if (s_is_provider_failure(&job->err)) {",
  "tests": "^churn\\.breaker$"},
 {"name": "deadline_backstop_removed",
  "why": "a request at a worker far past its deadline is never expired",
  "file": "broker/llmq_broker.c",
  "old": "                     : r->deadline + self->config.inflight_grace_ms);",
  "new": "                     : s_NO_EXPIRY);",
  "tests": "^broker\\.it\\.backstop$"},
 {"name": "bye_inflight_dropped",
  "why": "bye forgets the worker at once: its in-flight requests are taken away",
  "file": "broker/llmq_broker.c",
  "old": "            if (w->in_flight == 0) {\n                s_log(self, \"info\", \"worker_gone\"",
  "new": "            if (1) {\n                s_log(self, \"info\", \"worker_gone\"",
  "tests": "^broker\\.it\\.bye_inflight$"},
 {"name": "queued_deadline_ignored",
  "why": "a queued request past its deadline is not expired",
  "file": "broker/llmq_broker.c",
  "old": "        } else if (r->deadline <= now) {",
  "new": "        } else if (0) {",
  "tests": "^broker\\.it\\.priority_deadline$"},
 {"name": "broker_exit_nonzero",
  "why": "llmq-broker exits 3 after SIGTERM (a crash at shutdown)",
  "file": "broker/main.c",
  "old": "    zactor_destroy(&broker);\n    return rc;\n}",
  "new": "    zactor_destroy(&broker);\n    return rc + 3;\n}",
  "tests": "^client\\.run$|^batch\\.e2e\\.detach$"},
 {"name": "sim_exit_nonzero",
  "why": "llmq-sim exits 3 after SIGTERM (a crash at shutdown)",
  "file": "sim/sim_main.c",
  "old": "    free(c->api_keys);\n    return 0;\n}",
  "new": "    free(c->api_keys);\n    return 3;\n}",
  "tests": "^client\\.run$|^batch\\.e2e\\.detach$|^worker\\.success$"},
 {"name": "worker_accepts_past_capacity",
  "why": "the worker takes a req beyond its capacity instead of overloaded",
  "file": "worker/llmq_worker.c",
  "old": "bool over = (int64_t)zhashx_size(self->jobs) >= self->cfg->capacity;",
  "new": "bool over = false;",
  "tests": "^worker\\.capacity$"},
 {"name": "resume_ignores_out",
  "why": "llmq run resumes nothing: every line is sent again",
  "file": "client/llmq_runner.c",
  "old": "(const char *)zhashx_lookup(lines, item->custom_id);",
  "new": "(const char *)zhashx_lookup(lines, \"\");",
  "tests": "^client\\.resume$|^client\\.selftest$"},
 {"name": "partial_line_kept",
  "why": "a partial last line is left in OUT before appending (the next line is lost)",
  "file": "client/llmq_runner.c",
  "old": "    if (dropped > 0 && ",
  "new": "    if (dropped > 1000000000 && ",
  "tests": "^client\\.resume$|^client\\.selftest$"},
 {"name": "runner_overloaded_not_retried",
  "why": "llmq run writes an overloaded answer at once instead of backing off and retrying",
  "file": "client/llmq_runner.c",
  "old": "self->todo[index].tries < self->retries)",
  "new": "self->todo[index].tries < 0)",
  "tests": "^client\\.selftest$"},
 {"name": "runner_window_never_shrinks",
  "why": "an overloaded answer does not halve the window of llmq run",
  "file": "client/llmq_runner.c",
  "old": "        self->cwnd = self->cwnd / 2 < 1 ? 1 : self->cwnd / 2;",
  "new": "        self->cwnd = self->cwnd;",
  "tests": "^client\\.selftest$"},
 {"name": "runner_output_unordered",
  "why": "llmq run leaves OUT in arrival order (no ordered rewrite)",
  "file": "client/llmq_runner.c",
  "old": "    return llmq_jsonl_write_ordered(files->output, files->items, files->lines);",
  "new": "    return 0;",
  "tests": "^client\\.selftest$"},
 {"name": "retry_failed_ignored",
  "why": "--retry-failed keeps the error lines",
  "file": "client/llmq_jsonl.c",
  "old": "(retry_failed && error && !cJSON_IsNull(error))",
  "new": "(retry_failed && error && !cJSON_IsNull(error) && 0)",
  "tests": "^client\\.resume$"},
 {"name": "batch_body_swap_realtime",
  "why": "a realtime batch result is stored for the neighbouring item",
  "file": "broker/llmq_batch.c",
  "old": "    llmq_batch_result_t r = {.index = index};\n    r.ok = llmq_msg_ok(res);",
  "new": "    llmq_batch_result_t r = {.index = index ^ 1};\n    r.ok = llmq_msg_ok(res);",
  "tests": "^batch\\.e2e\\.auto$"},
 {"name": "batch_state_name_shifted",
  "why": "two batch states share a name: the store and the wire lose one",
  "file": "broker/llmq_batch_state.h",
  "old": "X(CANCELLED, \"cancelled\")",
  "new": "X(CANCELLED, \"cancelling\")",
  "tests": "^batch\\.manager$|^batch\\.e2e\\.cancel$"},
 {"name": "sim_batch_line_ignores_directives",
  "why": "llmq-sim answers every batch line 200: fail and hang directives do nothing offline",
  "file": "sim/sim_main.c",
  "old": "s_action_t act = s_directives(sim, &r, true, &code, &ctx);",
  "new": "s_action_t act = A_OK;",
  "tests": "^sim\\.batch_openai$|^sim\\.batch_anthropic$"},
 {"name": "batch_body_swap_provider",
  "why": "a provider batch result line is stored for the neighbouring item",
  "file": "broker/llmq_batch.c",
  "old": "            llmq_batch_result_t r = {.index = index};\n            r.ok = cJSON_IsTrue",
  "new": "            llmq_batch_result_t r = {.index = index ^ 1};\n            r.ok = cJSON_IsTrue",
  "tests": "^batch\\.e2e\\.(provider|detach)$"}
]
EOF

mutate() {   # mutate NAME: apply the mutant to $src (fails if it does not match)
  MUTANTS="$MUTANTS" python3 - "$1" "$src" <<'PY'
import json, os, sys
name, src = sys.argv[1], sys.argv[2]
m = {x["name"]: x for x in json.loads(os.environ["MUTANTS"])}[name]
path = src + "/" + m["file"]
text = open(path).read()
n = text.count(m["old"])
if n != m.get("count", 1):
    sys.exit("mutant %s: the text to replace occurs %d times in %s (source changed?)"
             % (name, n, m["file"]))
open(path, "w").write(text.replace(m["old"], m["new"]))
PY
}

field() {    # field NAME KEY
  python3 -c 'import json,sys; m={x["name"]: x for x in json.loads(sys.stdin.read())}; print(m[sys.argv[1]][sys.argv[2]])' "$1" "$2" <<<"$MUTANTS"
}

names=$(python3 -c 'import json,sys; print(" ".join(x["name"] for x in json.loads(sys.stdin.read())))' <<<"$MUTANTS")
if [ "${1:-}" = "--list" ]; then
  for n in $names; do printf '%-30s %s\n' "$n" "$(field "$n" why)"; done
  exit 0
fi
[ $# -gt 0 ] && names="$*"

# The scratch copy: this checkout without build trees and .git.
mkdir -p "$src" "$build"
(cd "$root" && tar --exclude='./build*' --exclude=./.git --exclude='./bindings/node/node_modules' -cf - .) \
  | (cd "$src" && tar -xf -)
log="$work/log"
mkdir -p "$log"

build_tree() {
  cmake -S "$src" -B "$build" -DLLMQ_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$log/cmake.txt" 2>&1 \
    && cmake --build "$build" -j"$jobs" >"$log/build.txt" 2>&1
}

run_tests() {   # run_tests REGEX LOGFILE: 0 if every test passed
  ctest --test-dir "$build" -R "$1" -j"$jobs" --timeout 150 --output-on-failure >"$2" 2>&1
}

echo "== mutants: scratch copy $src, build $build"
if ! build_tree; then
  echo "baseline build failed: see $log/build.txt"; tail -20 "$log/build.txt"; exit 2
fi
# Baseline: every selected test passes on the unmutated tree.
all_tests=$(for n in $names; do field "$n" tests; done | paste -sd'|')
if ! run_tests "$all_tests" "$log/baseline.txt"; then
  echo "baseline: the tests fail without any mutant: see $log/baseline.txt"
  grep -E "Failed|Timeout|\*\*\*" "$log/baseline.txt" | head -20
  exit 2
fi
echo "baseline: tests pass on the unmutated tree ($(grep -c ' Passed' "$log/baseline.txt") tests)"

survived=0
stale=0
for n in $names; do
  file=$(field "$n" file)
  cp -p "$root/$file" "$src/$file"       # the pristine file (a previous mutant may remain)
  if ! mutate "$n"; then
    echo "STALE     $n"
    stale=$((stale + 1))
    continue
  fi
  start=$(date +%s)
  if ! cmake --build "$build" -j"$jobs" >"$log/$n.build.txt" 2>&1; then
    echo "NO-BUILD  $n (the mutant does not compile: see $log/$n.build.txt)"
    stale=$((stale + 1))
  elif run_tests "$(field "$n" tests)" "$log/$n.txt"; then
    echo "SURVIVED  $n: $(field "$n" why) [tests: $(field "$n" tests)]"
    survived=$((survived + 1))
  else
    failed=$(grep -E '^\s*[0-9]+ - ' "$log/$n.txt" | sed -E 's/^\s*[0-9]+ - //' | paste -sd' ')
    echo "caught    $n: $(field "$n" why) [failed: $failed] ($(( $(date +%s) - start )) s)"
  fi
  cp -p "$root/$file" "$src/$file"
  touch "$src/$file"
done
# Leave the scratch build unmutated for the next run.
cmake --build "$build" -j"$jobs" >"$log/restore.txt" 2>&1 || true

total=$(wc -w <<<"$names")
echo "== mutants: $total, caught $((total - survived - stale)), survived $survived, stale $stale"
[ "$survived" -eq 0 ] && [ "$stale" -eq 0 ]
