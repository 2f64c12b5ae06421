#!/usr/bin/env bash
# tests.selftest_names: every selftest runner (LLMQ_SELFTEST_MAIN in
# proto/llmq_check.h) refuses a test name it does not know (exit 2), so a
# typo in CMake cannot turn a test into a pass; each runs one named test
# and prints its summary; a failed test exits 1.
set -u
bin="${LLMQ_BIN_DIR:?}"
status=0

# expect RC WHAT COMMAND...: run COMMAND (output kept in $out), check its
# exit code.
expect() {
  local want="$1" what="$2"
  shift 2
  out=$("$@" 2>&1)
  local rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL: $what: $* exited $rc (expected $want): $out" >&2
    status=1
    return 1
  fi
  echo "ok: $what"
}

# driver:a fast test it knows
for pair in broker_selftest:queue worker_selftest:limiter proto_selftest:duration \
            llmq_batch_selftest:store llmq_batch_api_selftest:agree llmq_client_selftest:jsonl \
            kit_selftest:rmtree; do
  driver="${pair%%:*}"
  known="${pair#*:}"
  if [ ! -x "$bin/$driver" ]; then
    echo "FAIL: $driver not built in $bin" >&2
    status=1
    continue
  fi
  expect 2 "$driver refuses an unknown test name" "$bin/$driver" no-such-test
  # A known name next to an unknown one: still refused, nothing run.
  if expect 2 "$driver refuses a list with an unknown name" "$bin/$driver" "$known" no-such-test \
     && echo "$out" | grep -q " run, "; then
    echo "FAIL: $driver ran tests before refusing a name: $out" >&2
    status=1
  fi
  if expect 0 "$driver $known runs" "$bin/$driver" "$known" \
     && ! echo "$out" | grep -q "^$driver: 1 run, 0 failed$"; then
    echo "FAIL: $driver $known: no summary line: $out" >&2
    status=1
  fi
done
# proto_codec keeps its own argument parsing (its cases are not selftests).
expect 2 "proto_codec refuses an unknown test name" "$bin/proto_codec" no-such-test
# A test that fails makes its runner exit 1 (kit_selftest fails on purpose).
expect 1 "a failed selftest exits 1" "$bin/kit_selftest" fails
exit $status
